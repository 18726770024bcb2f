# Shared by the bench scripts (sourced, not run).

# nginx_upstream_conf RUN SERVERS: prints an nginx config for a test
# upstream (one worker, no access log, long keep-alive) with the server
# blocks SERVERS, its runtime files under RUN (made here).
nginx_upstream_conf() {
    local run=$1 servers=$2
    mkdir -p "$run/nginx"
    cat <<CONF
worker_processes 1;
pid $run/nginx/nginx.pid;
error_log $run/upstream.log warn;
daemon off;
events { worker_connections 1024; }
http {
    client_body_temp_path $run/nginx/client_body;
    proxy_temp_path $run/nginx/proxy;
    fastcgi_temp_path $run/nginx/fastcgi;
    uwsgi_temp_path $run/nginx/uwsgi;
    scgi_temp_path $run/nginx/scgi;
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
$servers
}
CONF
}
