#!/usr/bin/env bash
# Write a private jabberd2 (router + sm + c2s, SQLite storage and authreg)
# configuration under DIR, with users u0..u(N-1), password "pw", domain
# "localhost", c2s on 127.0.0.1:C2S_PORT, router on 127.0.0.1:ROUTER_PORT.
#   bench/jabberd2-setup.sh DIR N C2S_PORT ROUTER_PORT
# Nothing outside DIR is touched.
set -euo pipefail
dir=$1 n=$2 c2sport=$3 rport=$4
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
lib=$(dirname "$(ls /usr/lib/*/jabberd2/storage_sqlite.so | head -1)")

rm -f "$dir/sqlite.db"
zcat /usr/share/doc/jabberd2/db-setup.sqlite.gz > "$dir/schema.sql"
/usr/bin/python3 - "$dir/sqlite.db" "$dir/schema.sql" "$n" <<'PY'
import sqlite3, sys
db, schema, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
c.executescript(open(schema).read())
c.executemany('INSERT INTO authreg (username, realm, password) VALUES (?,?,?)',
              (("u%d" % i, "localhost", "pw") for i in range(n)))
c.executemany('INSERT INTO active ("collection-owner", "time") VALUES (?,?)',
              (("u%d@localhost" % i, 1) for i in range(n)))
c.commit()
c.close()
PY

cat > "$dir/router-users.xml" <<EOF
<users><user><name>jabberd</name><secret>secret</secret></user></users>
EOF

cat > "$dir/router.xml" <<EOF
<router>
  <id>router</id>
  <pidfile>$dir/router.pid</pidfile>
  <log type='file'><file>$dir/router.log</file></log>
  <local><ip>127.0.0.1</ip><port>$rport</port>
    <users>$dir/router-users.xml</users><secret>secret</secret></local>
  <check><interval>60</interval><keepalive>0</keepalive></check>
  <io><max_fds>1024</max_fds><limits><bytes>0</bytes><connects>0</connects></limits>
    <access><order>allow,deny</order></access></io>
  <aliases></aliases>
  <aci><acl type='all'><user>jabberd</user></acl></aci>
</router>
EOF

cat > "$dir/sm.xml" <<EOF
<sm>
  <id>localhost</id>
  <pidfile>$dir/sm.pid</pidfile>
  <router><ip>127.0.0.1</ip><port>$rport</port><user>jabberd</user>
    <pass>secret</pass><retry><init>10</init><lost>3</lost><sleep>1</sleep></retry></router>
  <log type='file'><file>$dir/sm.log</file></log>
  <local><id>localhost</id></local>
  <storage><path>$lib</path><driver>sqlite</driver>
    <sqlite><dbname>$dir/sqlite.db</dbname>
      <sql>PRAGMA synchronous = OFF;</sql><busy-timeout>2000</busy-timeout></sqlite>
  </storage>
  <aci><acl type='all'><jid>admin@localhost</jid></acl></aci>
  <modules>
    <path>$lib</path>
    <chain id='sess-start'><module>status</module></chain>
    <chain id='sess-end'><module>status</module><module>iq-last</module></chain>
    <chain id='in-sess'><module>validate</module><module>status</module>
      <module>privacy</module><module>roster</module><module>vacation</module>
      <module>iq-vcard</module><module>iq-ping</module><module>iq-private</module>
      <module>disco</module><module>amp</module><module>offline</module>
      <module>announce</module><module>presence</module><module>deliver</module></chain>
    <chain id='out-sess'></chain>
    <chain id='in-router'><module>session</module><module>validate</module>
      <module>presence</module><module>privacy</module></chain>
    <chain id='out-router'><module>privacy</module></chain>
    <chain id='pkt-sm'><module>iq-last</module><module>iq-ping</module>
      <module>iq-time</module><module>iq-version</module><module>amp</module>
      <module>disco</module><module>announce</module><module>help</module>
      <module>echo</module><module>status</module><module>presence</module></chain>
    <chain id='pkt-user'><module>roster</module><module>presence</module>
      <module>disco</module><module>iq-vcard</module><module>amp</module>
      <module>deliver</module><module>vacation</module><module>offline</module>
      <module>iq-last</module></chain>
    <chain id='pkt-router'><module>session</module><module>disco</module></chain>
    <chain id='user-load'><module>active</module><module>roster</module>
      <module>roster-publish</module><module>privacy</module><module>vacation</module></chain>
    <chain id='user-unload'></chain>
    <chain id='user-create'><module>active</module><module>template-roster</module></chain>
    <chain id='user-delete'><module>active</module></chain>
    <chain id='disco-extend'><module>iq-version</module><module>help</module></chain>
  </modules>
  <discovery><identity><category>server</category><type>im</type>
    <name>Jabber IM server</name></identity><agents/><items></items></discovery>
  <user><template><active-cache-ttl>600</active-cache-ttl></template></user>
  <amp></amp><offline></offline><roster></roster><status></status>
</sm>
EOF

cat > "$dir/c2s.xml" <<EOF
<c2s>
  <id>c2s</id>
  <pidfile>$dir/c2s.pid</pidfile>
  <router><ip>127.0.0.1</ip><port>$rport</port><user>jabberd</user>
    <pass>secret</pass><retry><init>10</init><lost>3</lost><sleep>1</sleep></retry></router>
  <log type='file'><file>$dir/c2s.log</file></log>
  <local><id realm='localhost'>localhost</id><ip>127.0.0.1</ip><port>$c2sport</port></local>
  <io><max_fds>20000</max_fds>
    <limits><bytes>0</bytes><stanzas>0</stanzas><connects>0</connects>
      <stanzasize>65535</stanzasize></limits>
    <access><order>allow,deny</order></access>
    <check><interval>0</interval><idle>0</idle><keepalive>0</keepalive></check></io>
  <stats></stats><pbx></pbx><stream_redirect></stream_redirect>
  <authreg><path>$lib</path><module>sqlite</module>
    <mechanisms><traditional><plain/></traditional><sasl><plain/></sasl></mechanisms>
    <sqlite><dbname>$dir/sqlite.db</dbname><sql>PRAGMA synchronous = OFF;</sql>
      <busy-timeout>2000</busy-timeout><password_type><plaintext/></password_type></sqlite>
  </authreg>
</c2s>
EOF
echo "jabberd2 config in $dir"
