"""``asset-worker completion bash|zsh``: shell completion scripts generated from the argument parser.

Generated, never written by hand, so a new command, flag or choice completes as soon as the parser
has it: ``describe`` reads the parser into a small model (commands, their options, which options
take a value and which values they allow), and ``bash_script`` / ``zsh_script`` render it. Values
that cannot be known in advance (job keys, URLs, numbers) complete to nothing; an option whose
metavar is FILE or DIR completes file or directory names.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass

PROG = "asset-worker"
_EMPTY = '""'  # the case pattern of "no command yet"
FUNCTION = "_asset_worker"


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...]
    metavar: str | None
    repeatable: bool


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[str, ...]  # choices for the positional words (e.g. completion's shell)
    takes_positionals: bool
    positional_name: str = "argument"


def describe(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level (its options) and every subcommand, in the parser's order."""
    top = _command("", "", parser)
    commands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                commands.append(_command(name, helps.get(name, ""), sub))
    return top, commands


def _command(name: str, help_text: str, parser: argparse.ArgumentParser) -> Command:
    options: list[Option] = []
    positionals: list[str] = []
    takes_positionals = False
    positional_name = "argument"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        if action.option_strings:
            metavar = action.metavar if isinstance(action.metavar, str) else None
            options.append(
                Option(
                    flags=tuple(action.option_strings),
                    help=action.help or "",
                    takes_value=action.nargs != 0,
                    choices=choices,
                    metavar=metavar,
                    repeatable=isinstance(action, argparse._AppendAction),
                )
            )
        else:
            takes_positionals = True
            positionals += choices
            if isinstance(action.metavar, str):
                positional_name = action.metavar.lower()
    return Command(name, help_text, tuple(options), tuple(positionals), takes_positionals, positional_name)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    top, commands = describe(parser)
    return bash_script(top, commands) if shell == "bash" else zsh_script(top, commands)


# --- bash ----------------------------------------------------------------------------------------


def _value_cases(options: tuple[Option, ...], indent: str) -> list[str]:
    """``case "$prev"`` arms: an option's allowed values, files, directories, or nothing to offer."""
    arms: list[str] = []
    for option in options:
        if not option.takes_value:
            continue
        pattern = "|".join(option.flags)
        if option.choices:
            words = shlex.quote(" ".join(option.choices))
            action = f'COMPREPLY=($(compgen -W {words} -- "$cur"))'
        elif option.metavar in ("FILE", "DIR"):
            kind = "-f" if option.metavar == "FILE" else "-d"
            action = f'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen {kind} -- "$cur"))'
        else:
            action = "COMPREPLY=()"  # a URL, a number, a name: nothing to guess
        arms.append(f"{indent}{pattern}) {action}; return 0 ;;")
    return arms


def bash_script(top: Command, commands: list[Command]) -> str:
    takes_value = sorted({f for o in top.options if o.takes_value for f in o.flags})
    lines = [
        f"# {PROG} completion for bash, generated from its argument parser.",
        f'# Install: eval "$({PROG} completion bash)"  (e.g. in ~/.bashrc)',
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    # --flag=value: bash splits at '=' (COMP_WORDBREAKS).",
        '    if [[ "$prev" == "=" && $COMP_CWORD -ge 2 ]]; then prev="${COMP_WORDS[COMP_CWORD-2]}"; fi',
        '    if [[ "$cur" == "=" ]]; then cur=""; fi',
        '    local cmd="" i w',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "$w" in',
        f"            {'|'.join(takes_value)}) ((i++)) ;;",
        "            -*) ;;",
        '            *) cmd="$w"; break ;;',
        "        esac",
        "    done",
        '    local opts="" words=""',
        '    case "$cmd" in',
    ]
    for command in [top, *commands]:
        flags = " ".join(f for o in command.options for f in o.flags)
        lines.append(f"        {command.name or _EMPTY})")
        lines.append('            case "$prev" in')
        lines += _value_cases(command.options, "                ")
        lines.append("            esac")
        lines.append(f"            opts={shlex.quote(flags)}")
        if not command.name:
            lines.append(f"            words={shlex.quote(' '.join(c.name for c in commands))}")
        elif command.positionals:
            lines.append(f"            words={shlex.quote(' '.join(command.positionals))}")
        lines.append("            ;;")
    lines += [
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "    fi",
        "    return 0",
        "}",
        f"complete -F {FUNCTION} {PROG}",
        "",
    ]
    return "\n".join(lines)


# --- zsh -----------------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    """Help text as an ``_arguments`` description: its first clause, without the characters that
    would end the description or the spec early."""
    first = re.split(r"[;(]", text, maxsplit=1)[0].strip()
    return re.sub(r"[\[\]:'\\`$\"]", "", first)


def _zsh_option(option: Option) -> list[str]:
    description = _zsh_text(option.help) or option.flags[-1].lstrip("-")
    if not option.takes_value:
        action = ""
    elif option.choices:
        action = f":{option.metavar or 'value'}:({' '.join(option.choices)})"
    elif option.metavar == "FILE":
        action = ":file:_files"
    elif option.metavar == "DIR":
        action = ":directory:_files -/"
    else:
        action = f":{(option.metavar or option.flags[-1].lstrip('-')).lower()}: "
    repeat = "*" if option.repeatable else ""
    if len(option.flags) > 1:
        group = "(" + " ".join(option.flags) + ")"
        return [f"'{group}'{{{','.join(option.flags)}}}'[{description}]{action}'"]
    return [f"'{repeat}{option.flags[0]}[{description}]{action}'"]


def zsh_script(top: Command, commands: list[Command]) -> str:
    lines = [
        f"#compdef {PROG}",
        f"# {PROG} completion for zsh, generated from its argument parser.",
        f'# Install: eval "$({PROG} completion zsh)" in ~/.zshrc, after compinit',
        f"{FUNCTION}() {{",
        "    local curcontext=$curcontext state line",
        "    typeset -A opt_args",
        "    local -a commands",
        "    commands=(",
        *(f"        {shlex.quote(c.name + ':' + _zsh_text(c.help))}" for c in commands),
        "    )",
        "    _arguments -C \\",
        *(f"        {spec} \\" for o in top.options for spec in _zsh_option(o)),
        "        '1:command:->command' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "        command) _describe -t commands 'asset-worker command' commands ;;",
        "        argument)",
        "            case $words[1] in",
    ]
    for command in commands:
        specs = [spec for o in command.options for spec in _zsh_option(o)]
        if command.positionals:
            specs.append(f"'1:{command.name}:({' '.join(command.positionals)})'")
        elif command.takes_positionals:
            # _guard: a message for the positional words, offered only for a word that is not a flag
            # (a bare message would stop a unique flag from being inserted).
            metavar = command.positional_name
            specs.append(f"'*:{metavar}:_guard \"^-*\" {metavar}'")
        lines.append(f"                {command.name})")
        lines.append("                    _arguments \\")
        lines += [f"                        {spec} \\" for spec in specs[:-1]]
        lines.append(f"                        {specs[-1]} ;;")
    lines += [
        "            esac",
        "            ;;",
        "    esac",
        "}",
        # Loaded from $fpath as a completion function, run it; evaluated from ~/.zshrc, register it.
        'if [[ "${zsh_eval_context[-1]}" == loadautofunc ]]; then',
        f'    {FUNCTION} "$@"',
        "else",
        f"    compdef {FUNCTION} {PROG}",
        "fi",
        "",
    ]
    return "\n".join(lines)
