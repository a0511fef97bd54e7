"""Settings shared by every test layer.

Hypothesis' default 200 ms deadline per example is a timing assertion, and timing is not what our properties
are about: on a 2-vCPU VM running namespaces, charon and workers alongside, an example can take longer without
anything being wrong. Properties keep their example counts; only the clock is taken out of them.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("xdpsec", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("xdpsec")
