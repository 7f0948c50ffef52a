
set terminal pngcairo size 1200,500 noenhanced
set output '/work/main/bench/results/20261203-172827.png'
set multiplot layout 1,2 title 'ngx_stream_xmpp_cm benchmark 2026-12-03T17:28:27 (10000 msg/s offered, 1 worker, 2 CPUs)'
set logscale x
set grid
set key below
set xlabel 'sessions'
set ylabel 'CPU us per relayed message'
set yrange [0:*]
plot '/work/main/bench/results/20261203-172827-cm.dat' using 1:2 with linespoints title 'nginx xmpp_cm worker', '/work/main/bench/results/20261203-172827-relay.dat' using 1:2 with linespoints title 'nginx proxy_pass worker'
set ylabel 'RSS bytes per idle session'
plot '/work/main/bench/results/20261203-172827-cm.dat' using 1:3 with linespoints title 'nginx xmpp_cm worker', '/work/main/bench/results/20261203-172827-relay.dat' using 1:3 with linespoints title 'nginx proxy_pass worker'
unset multiplot
