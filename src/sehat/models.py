"""Every domain's models, imported in one place so migrations and tests see the whole schema."""

from sehat.access import models as access_models
from sehat.core import audit as audit_models
from sehat.core import events as event_models
from sehat.core.db import Base
from sehat.identity import models as identity_models
from sehat.patients import models as patient_models
from sehat.queue import models as queue_models
from sehat.scheduling import models as scheduling_models
from sehat.tenancy import models as tenancy_models

metadata = Base.metadata

__all__ = [
    "access_models",
    "audit_models",
    "event_models",
    "identity_models",
    "metadata",
    "patient_models",
    "queue_models",
    "scheduling_models",
    "tenancy_models",
]
