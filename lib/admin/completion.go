package admin

import (
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// The bash and zsh scripts are urfave/cli's (autocomplete/), bound to
// mtwatch: they ask the binary itself for candidates with
// --generate-bash-completion, so they never go stale.
const bashCompletion = `# bash completion for mtwatch; source it or install it as
# /usr/share/bash-completion/completions/mtwatch
_mtwatch_complete() {
  local cur opts
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == "-"* ]]; then
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
  return 0
}
complete -o bashdefault -o default -F _mtwatch_complete mtwatch
`

const zshCompletion = `#compdef mtwatch
# zsh completion for mtwatch; put it in a directory of $fpath as _mtwatch

_mtwatch() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}

compdef _mtwatch mtwatch
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script",
		ArgsUsage: "bash|zsh|fish",
		Description: `Prints the completion script for the shell, e.g.
  mtwatch completion bash > /usr/share/bash-completion/completions/mtwatch
  mtwatch completion zsh > /usr/local/share/zsh/site-functions/_mtwatch
  mtwatch completion fish > /usr/share/fish/vendor_completions.d/mtwatch.fish`,
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("completion takes one of bash, zsh, fish")
			}
			var script string
			switch sh := c.Args().First(); sh {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return failf("fish completion: %v", err)
				}
				script = s
			default:
				return usagef("completion: unknown shell %q (bash, zsh, fish)", sh)
			}
			_, err := io.WriteString(c.App.Writer, strings.TrimLeft(script, "\n"))
			return err
		},
	}
}
