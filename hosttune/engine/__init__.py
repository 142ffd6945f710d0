"""Plan, transactional apply, journal of originals, rollback, lock."""

from hosttune.engine.core import (
    ApplyReport,
    AuditReport,
    PlanReport,
    RollbackReport,
    StepResult,
    apply,
    audit,
    journal_status,
    plan,
    rollback,
)

__all__ = ["ApplyReport", "AuditReport", "PlanReport", "RollbackReport", "StepResult", "apply",
           "audit", "journal_status", "plan", "rollback"]
