#!/usr/bin/env bash
# tests/check-cycles.sh - the library reads bottom-up: no cycle among its objects.
#   bash tests/check-cycles.sh [BUILD_DIR]      (default: build; `make check` runs it)
# Over `nm` of each BUILD/src/lib/*.o, object A depends on object B when A
# uses (U) a symbol that B defines (T, D, B, R, ...). Prints the module graph
# in a topological order, bottom-up (each module after every module it uses),
# and fails when modules use each other in a cycle, printing each group of
# modules that do (a strongly connected component) and one cycle in it.
set -u
build=${1:-build}
dir=$build/src/lib
shopt -s nullglob
objs=("$dir"/*.o)
if [ ${#objs[@]} -eq 0 ]; then
	echo "check-cycles: no objects in $dir (build first)" >&2
	exit 1
fi
NM=${NM:-nm}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/uses"
: > "$tmp/defs"
for o in "${objs[@]}"; do
	m=$(basename "$o" .o)
	"$NM" -P "$o" > "$tmp/nm" || { echo "check-cycles: $NM failed on $o" >&2; exit 1; }
	awk -v m="$m" '$2 == "U" { print m, $1 }' "$tmp/nm" >> "$tmp/uses"
	awk -v m="$m" '$2 ~ /^[TDBRCGSVW]$/ { print m, $1 }' "$tmp/nm" >> "$tmp/defs"
done
# edges "A B": A uses a symbol that B defines (A != B)
awk 'NR == FNR { def[$2] = $1; next } ($2 in def) && def[$2] != $1 { print $1, def[$2] }' \
	"$tmp/defs" "$tmp/uses" | sort -u > "$tmp/edges"
for o in "${objs[@]}"; do basename "$o" .o; done > "$tmp/nodes"
awk '
	FILENAME == ARGV[1] { nodes[++nn] = $1; next }
	{ adj[$1] = adj[$1] " " $2 }
	# Tarjan: components come out dependencies first (bottom-up)
	function visit(v,    k, n, w, ws, c) {
		idx[v] = low[v] = ++counter
		st[++sp] = v
		on[v] = 1
		n = split(adj[v], ws, " ")
		for (k = 1; k <= n; k++) {
			w = ws[k]
			if (!(w in idx)) {
				visit(w)
				if (low[w] < low[v])
					low[v] = low[w]
			} else if (on[w] && idx[w] < low[v]) {
				low[v] = idx[w]
			}
		}
		if (low[v] == idx[v]) {
			c = ++ncomp
			do {
				w = st[sp--]
				on[w] = 0
				comp[w] = c
				members[c] = members[c] (members[c] == "" ? "" : " ") w
				size[c]++
			} while (w != v)
		}
	}
	# one cycle through v inside its component (breadth-first back to v)
	function cycle(v,    q, h, t, u, k, n, ws, w, path, seen) {
		h = 1; t = 0
		q[++t] = v
		seen[v] = 1
		while (h <= t) {
			u = q[h++]
			n = split(adj[u], ws, " ")
			for (k = 1; k <= n; k++) {
				w = ws[k]
				if (comp[w] != comp[v])
					continue
				if (w == v) {
					path = v
					for (; u != v; u = from[u])
						path = u " -> " path
					return v " -> " path
				}
				if (!seen[w]) {
					seen[w] = 1
					from[w] = u
					q[++t] = w
				}
			}
		}
		return v
	}
	function deps(v,    k, n, ws, s) {
		n = split(adj[v], ws, " ")
		s = ""
		for (k = 1; k <= n; k++)
			s = s (k > 1 ? " " : "") ws[k]
		return s == "" ? "-" : "-> " s
	}
	END {
		for (i = 1; i <= nn; i++)
			if (!(nodes[i] in idx))
				visit(nodes[i])
		bad = 0
		for (c = 1; c <= ncomp; c++)
			bad += size[c] > 1
		print bad ? "module graph, bottom-up, with the cycles grouped in [ ]:" \
			  : "module graph, bottom-up (each module uses only modules above it):"
		for (c = 1; c <= ncomp; c++) {
			n = split(members[c], ms, " ")
			if (n > 1)
				print "  [ cycle: " members[c] " ]"
			for (k = 1; k <= n; k++)
				printf "  %s%-10s %s\n", (n > 1 ? "  " : ""), ms[k], deps(ms[k])
		}
		if (!bad)
			exit 0
		print ""
		print "check-cycles: FAILED: library objects use each other in a cycle:"
		for (c = 1; c <= ncomp; c++)
			if (size[c] > 1) {
				split(members[c], ms, " ")
				print "  " cycle(ms[1])
			}
		exit 1
	}' "$tmp/nodes" "$tmp/edges"
