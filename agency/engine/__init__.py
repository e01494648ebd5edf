"""The engine: runs projects durably, one stage per file.

- :mod:`.lifecycle`: the runner of each project, start, stop, the budget gate
- :mod:`.planning`: approaches and the work plan (and its validation)
- :mod:`.staffing`: the plan becomes streams, members, tasks and their spaces
- :mod:`.scheduling`: ready tasks start, streams close, one worker per active task
- :mod:`.work`: a specialist's turn; :mod:`.questions`: answers to ``/ask``
- :mod:`.review`: the Collaborator's review; :mod:`.escalation`: the PM's decision
- :mod:`.delivery`: the deliverable and the after-delivery hooks
- :mod:`.decisions`: the Director's approve/reject, one handler per approval kind
- below the stages: :mod:`.base` (shared constants, statements, the commit
  helper) and :mod:`.tasks` (transitions several stages make)
"""
from agency.engine.base import LEARNING_HANDLE, PM_HANDLE, ProjectPaused, is_lock_timeout
from agency.engine.lifecycle import Engine
from agency.engine.scheduling import FlightStats

__all__ = ["LEARNING_HANDLE", "PM_HANDLE", "Engine", "FlightStats", "ProjectPaused", "is_lock_timeout"]
