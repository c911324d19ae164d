"""Row and column names shared by the plan, which writes the table specs, and the tables, which read them (a module
of its own, so that `conspo tables` jobs import neither torch nor the objective registry)."""

BASE_MODEL = "Base Model"
AVERAGE = "Avg"
