#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 5s).
# A target's seed corpus lives in its package's testdata/fuzz/<Name>/.
set -euo pipefail
fuzztime=${FUZZTIME:-5s}
cd "$(dirname "$0")/.."
status=0
while IFS=: read -r file name; do
	pkg=$(dirname "$file")
	echo "fuzz $pkg $name ($fuzztime)"
	log="/tmp/mixvpn-fuzz-$name.log"
	run() { go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" >"$log" 2>&1; }
	if ! run; then
		# Go's fuzz coordinator sometimes gives up on a slow worker with a
		# bare "context deadline exceeded" and no failing input; that is
		# the engine, not a finding, so it gets one more run. Any real
		# failure (a crasher is always written to testdata) fails at once.
		if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
			echo "  fuzz engine timed out without a finding; running $name again"
			run || { cat "$log"; status=1; }
		else
			cat "$log"
			status=1
		fi
	fi
done < <(grep -rHoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9_]+)' . | sed -E 's/:func /:/' | sort)
exit $status
