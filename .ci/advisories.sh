#!/usr/bin/env bash
# Takes a new snapshot of the RustSec advisories that concern this workspace: every
# advisory of every crate in Cargo.lock, from a checkout of
# https://github.com/rustsec/advisory-db given as $1, into .ci/advisory-db. The test
# integration-tests/tests/advisories.rs audits Cargo.lock against it offline (CI has no
# route to github.com) and fails when Cargo.lock names a crate the snapshot was not
# taken for.
set -euo pipefail
cd "$(dirname "$0")/.."
source_db="${1:?usage: .ci/advisories.sh <checkout of rustsec/advisory-db>}"
[ -d "$source_db/crates" ] || { echo "$source_db has no crates/ folder" >&2; exit 1; }
out=.ci/advisory-db
rm -rf "$out"
mkdir -p "$out/crates"
sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u > "$out/crates.txt"
while read -r name; do
    if [ -d "$source_db/crates/$name" ]; then
        cp -r "$source_db/crates/$name" "$out/crates/$name"
    fi
done < "$out/crates.txt"
cp "$source_db/LICENSE.txt" "$out/LICENSE.txt"
commit=$(git -C "$source_db" log -1 --format='%H %cs' 2>/dev/null || echo "unknown (not a git checkout)")
{
    echo "Advisories of the crates in crates.txt, from rustsec/advisory-db at $commit."
    echo "Taken with .ci/advisories.sh; $(find "$out/crates" -name '*.md' | wc -l) advisories."
} > "$out/SNAPSHOT"
cat "$out/SNAPSHOT"
