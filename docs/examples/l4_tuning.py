"""How-to: choose keepalive values from the idle timeouts on your path."""

from __future__ import annotations

import trioheart

# Behind an AWS ALB (60 s idle timeout): probe after 25 s of silence,
# every 5 s, give up after 4 unanswered probes (45 s in all), and let sent
# data stay unacknowledged for at most 45 s too.
behind_alb = trioheart.KeepaliveConfig(idle=25, interval=5, count=4, user_timeout=45)
assert behind_alb.probing_time == 45

# A value the kernel would not take is refused at once, naming the field:
try:
    trioheart.KeepaliveConfig(idle=25, interval=5, count=4, user_timeout=30)
except trioheart.ConfigError as exc:
    print(exc)  # user_timeout must cover the keepalive probing ...

config = trioheart.ConnectionConfig(keepalive=behind_alb)
