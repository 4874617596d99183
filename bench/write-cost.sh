#!/usr/bin/env bash
# Measures what publishing costs the application's writes: transactions per
# second of pgbench clients that each insert one row per transaction into
#   plain  a table without triggers,
#   bare   a table whose trigger calls pg_notify (no durability),
#   rt     a table with realtime.notify_changes() (durable, commit-ordered ids),
# and of clients that call realtime.publish directly (pub).
#
# With BATCH above 1, each transaction inserts (or publishes) BATCH rows,
# and the figures are rows (events) per second instead.
#
# Usage: bench/write-cost.sh DATABASE_URL [CLIENTS] [SECONDS] [ROUNDS] [BATCH]
# The database must have the sidecar's migrations (sidecar migrate up, or
# the database that sidecar dev prints). It creates tables named
# bench_plain, bench_bare and bench_rt, and leaves them.
set -euo pipefail

url=${1:?usage: bench/write-cost.sh DATABASE_URL [CLIENTS] [SECONDS] [ROUNDS] [BATCH]}
clients=${2:-4}
seconds=${3:-5}
rounds=${4:-3}
batch=${5:-1}
if ! [[ $batch =~ ^[1-9][0-9]*$ ]] || ((batch > 10000)); then
	echo "BATCH $batch: use a whole number from 1 to 10000" >&2
	exit 2
fi

psql "$url" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE IF NOT EXISTS bench_plain (id bigserial PRIMARY KEY, v jsonb);
CREATE TABLE IF NOT EXISTS bench_bare (id bigserial PRIMARY KEY, v jsonb);
CREATE TABLE IF NOT EXISTS bench_rt (id bigserial PRIMARY KEY, v jsonb);
CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_bare', row_to_json(NEW)::text);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_bare AFTER INSERT ON bench_bare FOR EACH ROW EXECUTE FUNCTION bench_notify();
CREATE OR REPLACE TRIGGER bench_rt AFTER INSERT ON bench_rt FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes();
SQL

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for table in plain bare rt; do
	echo "INSERT INTO bench_$table (v) SELECT '{\"a\": 1}' FROM generate_series(1, $batch);" >"$dir/$table.sql"
done
echo "SELECT realtime.publish('bench.pub', '{\"a\": 1}') FROM generate_series(1, $batch);" >"$dir/pub.sql"

echo "clients=$clients seconds=$seconds rounds=$rounds batch=$batch"
if ((batch == 1)); then
	echo "round plain bare rt pub (transactions per second)"
else
	echo "round plain bare rt pub (rows or events per second, $batch per transaction)"
fi
for round in $(seq "$rounds"); do
	line="$round"
	for variant in plain bare rt pub; do
		tps=$(pgbench "$url" -n -c "$clients" -j "$clients" -T "$seconds" -f "$dir/$variant.sql" 2>/dev/null |
			awk -v batch="$batch" '/^tps/ {printf "%d", $3 * batch}')
		line="$line $tps"
	done
	echo "$line"
done
