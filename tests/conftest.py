import os

# Must be set before torch loads OpenMP: spinning worker threads make small CPU ops 20-30x slower
# on a shared machine (measured: the accuracy-matrix test took 320 s instead of 20 s under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
