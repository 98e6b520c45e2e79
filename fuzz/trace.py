"""The trace language, re-exported for fuzz/ and for users' scripts: it lives in
language/trace.py, below oracles/ and fuzz/, because every layer shares it (data flows one way:
impls/ and oracles/ never import fuzz/)."""
from language.trace import *  # noqa: F401,F403
from language.trace import (MAIN_TASK, SCHEMA, TASK_NAME, TASK_ROLES, TraceError,  # noqa: F401
                            dumps, load, loads)
