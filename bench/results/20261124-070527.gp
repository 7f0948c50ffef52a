
set terminal pngcairo size 1200,500 noenhanced
set output 'results/20261124-070527.png'
set multiplot layout 1,2 title 'ngx_stream_xmpp_cm benchmark 2026-11-24T07:05:27 (10000 msg/s offered, 1 worker, 2 CPUs)'
set logscale x
set grid
set key below
set xlabel 'sessions'
set ylabel 'CPU us per relayed message'
set yrange [0:*]
plot 'results/20261124-070527-cm.dat' using 1:2 with linespoints title 'nginx xmpp_cm worker', 'results/20261124-070527-relay.dat' using 1:2 with linespoints title 'nginx proxy_pass worker', 'results/20261124-070527-jabberd2.dat' using 1:2 with linespoints title 'jabberd2 c2s'
set ylabel 'RSS bytes per idle session'
plot 'results/20261124-070527-cm.dat' using 1:3 with linespoints title 'nginx xmpp_cm worker', 'results/20261124-070527-relay.dat' using 1:3 with linespoints title 'nginx proxy_pass worker', 'results/20261124-070527-jabberd2.dat' using 1:3 with linespoints title 'jabberd2 c2s'
unset multiplot
