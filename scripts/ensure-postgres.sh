#!/usr/bin/env bash
# Ensure that PostgreSQL's initdb and postgres binaries are installed: the
# integration tests and the dev command run a throwaway cluster from them.
# When they are missing, install Debian's postgresql package. Running the
# script again does nothing once the binaries are there.
#
# It looks where the Go code (package pgcluster) looks: the directory of
# initdb on PATH, pg_config --bindir, then /usr/lib/postgresql/*/bin.
set -euo pipefail

# Print the first directory that contains executable initdb and postgres.
find_bindir() {
	local candidates=() initdb dir
	if initdb=$(command -v initdb 2>/dev/null); then
		candidates+=("$(dirname "$initdb")" "$(dirname "$(readlink -f "$initdb")")")
	fi
	if command -v pg_config >/dev/null 2>&1; then
		candidates+=("$(pg_config --bindir 2>/dev/null || true)")
	fi
	if [ -d /usr/lib/postgresql ]; then
		while IFS= read -r dir; do
			candidates+=("$dir")
		done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
	fi

	for dir in "${candidates[@]}"; do
		if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then
			echo "$dir"
			return 0
		fi
	done
	return 1
}

if bindir=$(find_bindir); then
	echo "ensure-postgres: initdb and postgres found in $bindir"
	exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	sudo=(sudo)
fi

# invoke-rc.d runs /usr/sbin/policy-rc.d before it starts a service, and
# exit code 101 means "action forbidden". This keeps the package from
# starting its own cluster, which the tests do not use. An existing policy
# is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "ensure-postgres: initdb or postgres not found; installing Debian's postgresql package"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

if ! bindir=$(find_bindir); then
	echo "ensure-postgres: postgresql is installed, but initdb and postgres are still not found on PATH, in pg_config --bindir or in /usr/lib/postgresql/*/bin" >&2
	exit 1
fi
echo "ensure-postgres: initdb and postgres installed in $bindir"
