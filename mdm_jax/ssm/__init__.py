"""State-space model cores."""
from mdm_jax.ssm.ssd import ssd  # noqa: F401
