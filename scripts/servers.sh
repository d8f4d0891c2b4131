# Sourced by scripts/abuse.sh and scripts/soak.sh: a work folder, removed at exit with every
# process whose pid is added to `pids` and the nginx `nginx_origin` starts. With `keep_work`
# set to a path, the folder (configs, logs) is copied there first.
work=$(mktemp -d)
pids=()
keep_work=${keep_work:-}
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "$keep_work" ] && cp -r "$work" "$keep_work"
  rm -rf "$work"
}
trap cleanup EXIT

# nginx_origin PORT DIRECTIVES: an nginx (one worker, no access log) on 127.0.0.1:PORT whose
# every location answers with DIRECTIVES (such as `return 200 "hello\n";`).
nginx_origin() {
  cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$1;
    location / { $2 }
  }
}
CONF
  nginx -c "$work/nginx.conf"
}
