#!/usr/bin/env bash
# Installs what the tests need besides Go: PostgreSQL (through
# ensure-postgres.sh), Node.js and npm for the JavaScript client's tests,
# Debian's Chromium for the browser test of the demo page, and the pinned
# npm packages of js/ and js/e2e. Each step is skipped when already done.
# apt-get needs root; run as another user, the script uses sudo when it is
# there.
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/ensure-postgres.sh

apt_install() {
	local sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		sudo="sudo"
	fi
	$sudo apt-get update
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	apt_install nodejs npm
fi
if [ ! -x /usr/bin/chromium ]; then
	apt_install chromium
fi

npm ci --prefix js --no-audit --no-fund
npm ci --prefix js/e2e --no-audit --no-fund
