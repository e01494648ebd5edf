"""The schema. ``Mapped[...]`` lives only here; changes go through an alembic migration."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class TZDateTime(TypeDecorator[datetime]):
    """Stores UTC; refuses naive datetimes (metricity's pattern)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class AgencyRow(Base):
    __tablename__ = "agencies"
    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)  # guild id, or "console"
    name: Mapped[str] = mapped_column(String(200))
    director_role_id: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class ProjectRow(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    objective: Mapped[str] = mapped_column(Text)
    oversight: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(24), index=True)
    paused_from: Mapped[str | None] = mapped_column(String(24))
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    plan_round: Mapped[int] = mapped_column(Integer, default=0)
    plan_attempt: Mapped[int] = mapped_column(Integer, default=0)  # plans returned for fixes in this round
    plan_problems: Mapped[list[Any] | None] = mapped_column(JSON)  # what the last invalid plan got wrong
    approach_round: Mapped[int] = mapped_column(Integer, default=0)
    director_notes: Mapped[list[Any]] = mapped_column(JSON, default=list)  # rejects and guidance, in order
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_tokens: Mapped[int | None] = mapped_column(Integer)
    budget_warned: Mapped[int] = mapped_column(Integer, default=0)
    deliverable: Mapped[str | None] = mapped_column(Text)
    deliverable_title: Mapped[str | None] = mapped_column(String(200))
    dry_run: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(100))  # the process running it (agency.engine.leases)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class ApproachRow(Base):
    __tablename__ = "approaches"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    idx: Mapped[int] = mapped_column(Integer)  # 1-based
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text)
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    risks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rough_cost: Mapped[str] = mapped_column(String(200), default="")
    chosen: Mapped[int] = mapped_column(Integer, default=0)


class MemberRow(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("agency_id", "handle", name="uq_member_handle"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    handle: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))  # pm | collaborator | specialist | learning | human
    role: Mapped[str] = mapped_column(String(40))  # e.g. researcher
    definition: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    external_user_id: Mapped[str | None] = mapped_column(String(64))  # humans
    display_name: Mapped[str | None] = mapped_column(String(100))
    avatar_url: Mapped[str | None] = mapped_column(String(400))
    tier: Mapped[str | None] = mapped_column(String(20))
    active: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class SystemMessageRow(Base):
    __tablename__ = "system_messages"
    __table_args__ = (UniqueConstraint("member_id", "version", name="uq_sysmsg_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # proposed | active | retired | rejected
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class StreamRow(Base):
    __tablename__ = "streams"
    __table_args__ = (UniqueConstraint("project_id", "key", name="uq_stream_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    key: Mapped[str] = mapped_column(String(40))
    goal: Mapped[str] = mapped_column(Text)
    success_criteria: Mapped[list[Any]] = mapped_column(JSON, default=list)
    collaborator_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | done | gated


class StreamMemberRow(Base):
    __tablename__ = "stream_members"
    __table_args__ = (UniqueConstraint("stream_id", "member_id", name="uq_stream_member"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "key", name="uq_task_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    key: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    assignee_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    success_criteria: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), index=True)  # pending running review approval done blocked cancelled
    step: Mapped[int] = mapped_column(Integer, default=0)  # turns taken in this attempt
    revision: Mapped[int] = mapped_column(Integer, default=0)  # submissions sent back so far
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # reassignments / restarts
    output: Mapped[str | None] = mapped_column(Text)
    review_notes: Mapped[str | None] = mapped_column(Text)
    context: Mapped[list[Any]] = mapped_column(JSON, default=list)  # answers, feedback, guidance for the next turn
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tier: Mapped[str | None] = mapped_column(String(20))
    completions: Mapped[int] = mapped_column(Integer, default=0)  # must end at exactly 1
    seq: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every transition: a step applies only on the seq it read
    asks: Mapped[list[Any]] = mapped_column(JSON, default=list)  # /ask questions waiting for the addressee's answer
    blocked_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class TaskDepRow(Base):
    __tablename__ = "task_deps"
    __table_args__ = (UniqueConstraint("task_id", "depends_on_id", name="uq_task_dep"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    depends_on_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # approach | plan | milestone | task | budget | revision
    subject: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | approved | rejected | superseded
    options: Mapped[list[Any]] = mapped_column(JSON, default=list)
    choice: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class SpaceRow(Base):
    """A declared place to talk; ``external_id`` is filled in by the chat adapter."""

    __tablename__ = "spaces"
    __table_args__ = (UniqueConstraint("agency_id", "address", name="uq_space_address"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    address: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    parent: Mapped[str | None] = mapped_column(String(80))
    topic: Mapped[str] = mapped_column(Text, default="")
    external_id: Mapped[str | None] = mapped_column(String(64))


class MessageRow(Base):
    """Chat messages in both directions; outbound rows are the outbox."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_outbox", "direction", "status"), Index("ix_messages_due", "status", "next_attempt_at"),
                      Index("ix_messages_space", "agency_id", "address", "status"))  # a space's pending head, its held-back check
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    direction: Mapped[str] = mapped_column(String(4), default="out")  # out | in
    address: Mapped[str] = mapped_column(String(80))
    persona: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20), default="chat")
    content: Mapped[str] = mapped_column(Text)
    attachment_name: Mapped[str | None] = mapped_column(String(200))
    attachment_text: Mapped[str | None] = mapped_column(Text)
    approval_id: Mapped[int | None] = mapped_column(ForeignKey("approvals.id"))
    mentions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    upsert_key: Mapped[str | None] = mapped_column(String(80), index=True)
    # pending | delivered | undeliverable | failed (older rows) | superseded | received (agency/states.py MESSAGE)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    external_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)  # the last failure, for people (undeliverable: why and what to do)
    cause: Mapped[str | None] = mapped_column(String(80))  # undeliverable: the permanent cause's key (one notice per cause)
    next_attempt_at: Mapped[datetime | None] = mapped_column(TZDateTime)  # pending after a failure: not before this time
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))  # the process sending it now (two never send one)
    claim_expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class LLMCallRow(Base):
    __tablename__ = "llm_calls"
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    stream_id: Mapped[int | None] = mapped_column(ForeignKey("streams.id"))
    call_key: Mapped[str | None] = mapped_column(String(120), index=True)
    role: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(30))
    model: Mapped[str] = mapped_column(String(100))
    tier: Mapped[str | None] = mapped_column(String(20))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    response: Mapped[str | None] = mapped_column(Text)
    retrieved: Mapped[list[Any]] = mapped_column(JSON, default=list)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    simulated: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str | None] = mapped_column(String(20))  # ok | repaired | invalid | error | accepted | revised
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    source: Mapped[str] = mapped_column(String(20))  # director | reaction | review | revision | escalation | human
    rating: Mapped[int | None] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class EventRow(Base):
    """The project's audit trail: every state change, in order."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class EvaluationRow(Base):
    """The Learning & Performance Manager's evaluation of a specialist (kept forever)."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(20))  # project | director | learning
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON)  # schemas.Evaluation
    mean_score: Mapped[float | None] = mapped_column(Float)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # performance figures at the time
    proposed_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class DeploymentRow(Base):
    """This deployment (one database): its id names what it shares with others, e.g. its collections on a
    Chroma server. One row, made by the migration that created the table."""

    __tablename__ = "deployment"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
