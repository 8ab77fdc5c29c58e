# bash completion for cbimg(1)                              -*- shell-script -*-
#
# Installed by `make install` as $(PREFIX)/share/bash-completion/completions/cbimg.
# Commands and each command's options are read from `cbimg help` and
# `cbimg help COMMAND` of the cbimg being completed, so they cannot drift from
# the program; operands complete as file names. Needs no bash-completion
# helpers (only COMP_WORDS, COMP_CWORD and compgen).

_cbimg() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
	local bin=${COMP_WORDS[0]} cmd= i n=0 arg help
	COMPREPLY=()
	# ~/bin/cbimg as typed: expand the tilde (only that) to run it
	case $bin in "~"/*) bin=$HOME/${bin#"~/"} ;; esac

	# The command: the first word after cbimg that is not an option.
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in
		-*) ;;
		*) cmd=${COMP_WORDS[i]}; break ;;
		esac
	done
	if [ -z "$cmd" ]; then
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W '--help --version' -- "$cur"))
		else
			COMPREPLY=($(compgen -W "$(command "$bin" help 2>/dev/null |
				sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }') help" -- "$cur"))
		fi
		return 0
	fi
	if [ "$cmd" = help ]; then
		COMPREPLY=($(compgen -W "$(command "$bin" help 2>/dev/null |
			sed -n '/^commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')" -- "$cur"))
		return 0
	fi
	help=$(command "$bin" help "$cmd" 2>/dev/null | sed -n '/^options:/,$p')

	# The argument of the option before: "--password-file FILE" in the help.
	if [[ $prev == --* ]]; then
		arg=$(printf '%s\n' "$help" | grep -oE -- "(^|[ ,])$prev [A-Z][A-Z:]*" | head -1)
		arg=${arg##* }
		case $arg in
		"") ;;
		FILE) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
		DIR) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")); return 0 ;;
		ALG) COMPREPLY=($(compgen -W 'xxh3 sha256' -- "$cur")); return 0 ;;
		MODE) COMPREPLY=($(compgen -W 'auto trace freeze reflink exec none' -- "$cur")); return 0 ;;
		*) return 0 ;;  # a number, a size, a name: nothing to offer
		esac
	fi
	# --s3-endpoint URL: taken by every command with an s3:// DEST, outside the commands' tables
	[ "$prev" = --s3-endpoint ] && return 0
	case $cmd in backup | list | info | restore | verify) help="$help --s3-endpoint" ;; esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$(printf '%s\n' "$help" | grep -oE -- '--[a-z0-9][a-z0-9-]*' | sort -u)" -- "$cur"))
		return 0
	fi
	# catalog's first operand is its action
	if [ "$cmd" = catalog ]; then
		for ((i = i + 1; i < COMP_CWORD; i++)); do
			case ${COMP_WORDS[i]} in -*) ;; *) n=$((n + 1)) ;; esac
		done
		if [ "$n" = 0 ]; then
			COMPREPLY=($(compgen -W 'rebuild' -- "$cur"))
			return 0
		fi
	fi
	compopt -o filenames 2>/dev/null
	COMPREPLY=($(compgen -f -- "$cur"))
	return 0
}
complete -F _cbimg cbimg
