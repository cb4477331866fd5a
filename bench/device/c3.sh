cp .big/C.0$1 /tmp/parts/ && ls -la /tmp/parts; [ -d /tmp/site/ray ] && echo site-present || echo "NO /tmp/site"
