
set terminal pngcairo size 1200,500 noenhanced
set output '/work/main/bench/results/20261124-105319.png'
set multiplot layout 1,2 title 'ngx_stream_xmpp_cm benchmark 2026-11-24T10:53:19 (10000 msg/s offered, 1 worker, 2 CPUs)'
set logscale x
set grid
set key below
set xlabel 'sessions'
set ylabel 'CPU us per relayed message'
set yrange [0:*]
plot '/work/main/bench/results/20261124-105319-cm.dat' using 1:2 with linespoints title 'nginx xmpp_cm worker', '/work/main/bench/results/20261124-105319-relay.dat' using 1:2 with linespoints title 'nginx proxy_pass worker', '/work/main/bench/results/20261124-105319-jabberd2.dat' using 1:2 with linespoints title 'jabberd2 c2s'
set ylabel 'RSS bytes per idle session'
plot '/work/main/bench/results/20261124-105319-cm.dat' using 1:3 with linespoints title 'nginx xmpp_cm worker', '/work/main/bench/results/20261124-105319-relay.dat' using 1:3 with linespoints title 'nginx proxy_pass worker', '/work/main/bench/results/20261124-105319-jabberd2.dat' using 1:3 with linespoints title 'jabberd2 c2s'
unset multiplot
