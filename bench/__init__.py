"""Load scripts that print figures and ratios against baselines measured in the same invocation.

    python bench/verify.py          # issue #2: the session check
    python bench/forward_auth.py    # issue #3: nginx / Caddy / Traefik forward-auth chains
    python bench/proxy.py           # issue #4: reverse proxy, big bodies, WebSocket

Each takes --duration, --connections, --runs, --threads and --quick; see its docstring for the targets.
"""
