#!/bin/sh
# Writes the secrets compose.yaml reads into ./secrets (next to this script), once: a session signing
# secret, and a Redis password as authproxy's REDIS_URL and as Redis' ACL file (a SHA-256 of it only).
# Existing files are kept, so running it again changes nothing. Needs only sh, od, tr, sha256sum
# (or shasum).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 700 secrets        # the directory keeps other users of this host out ...
random() { head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
write() {                # ... the files are world-readable so the containers' own users can read them
  [ -s "secrets/$1" ] && return 0
  printf '%s\n' "$2" > "secrets/$1.tmp" && chmod 644 "secrets/$1.tmp" && mv "secrets/$1.tmp" "secrets/$1"
  echo "wrote secrets/$1"
}
write session_secret "$(random)"
if [ ! -s secrets/redis_url ] || [ ! -s secrets/redis_acl ]; then
  rm -f secrets/redis_url secrets/redis_acl
  password=$(random)
  if command -v sha256sum >/dev/null; then sha=sha256sum; else sha="shasum -a 256"; fi   # macOS: shasum
  hash=$(printf '%s' "$password" | $sha | cut -d' ' -f1)
  write redis_url "redis://:$password@redis:6379/0"
  write redis_acl "user default on #$hash ~* &* +@all
user healthcheck on nopass -@all +ping"
fi
