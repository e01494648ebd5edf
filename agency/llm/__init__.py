"""Model providers, fakes, routing and usage accounting."""
