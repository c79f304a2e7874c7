"""The release ledger kept in the target Postgres (schema ``releasegate``)."""

from releasegate.ledger.store import Event, Ledger, Outcome, Release, StepStatus

__all__ = ["Event", "Ledger", "Outcome", "Release", "StepStatus"]
