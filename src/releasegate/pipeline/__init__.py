"""The release pipeline: steps in order, automatic verified rollback, resume."""
