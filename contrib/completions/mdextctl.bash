# bash completion for mdextctl(8)                          -*- shell-script -*-
#
# Hand-written; tests/man_pages.rs checks that it names every subcommand and
# every long option that `mdextctl --help` and `mdextctl <sub> --help` list.
# Install as /usr/share/bash-completion/completions/mdextctl.

_mdextctl_md_devices()
{
    local d names=()
    for d in /sys/block/md*/md/metadata_version; do
        [[ -r $d ]] || continue
        [[ $(<"$d") == external:mdext:* ]] || continue
        d=${d#/sys/block/}
        names+=("${d%%/*}")
    done
    printf '%s\n' "${names[@]}"
}

_mdextctl()
{
    local cur prev words cword
    _init_completion || return

    local cmds="create examine examine-bitmap assemble stop detail status fail remove add help"
    local sub="" i
    for ((i = 1; i < cword; i++)); do
        if [[ ${words[i]} != -* ]]; then
            sub=${words[i]}
            break
        fi
    done

    if [[ -z $sub ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W '--help --version' -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
        fi
        return
    fi

    local opts=""
    case $sub in
        create)
            case $prev in
                -l | --level)
                    COMPREPLY=($(compgen -W '1 10 5 6 raid1 mirror raid10 raid5 raid6' -- "$cur"))
                    return
                    ;;
                -n | --raid-devices | -N | --name | --bitmap-chunk | -c | --chunk | --time-base)
                    return
                    ;;
            esac
            opts="--level --raid-devices --name --bitmap-chunk --chunk --time-base
                  --assume-clean --force --help"
            ;;
        examine)
            opts="--json --export --help"
            ;;
        assemble)
            case $prev in
                --md)
                    return
                    ;;
            esac
            opts="--scan --run --readonly --md --json --help"
            ;;
        stop | detail)
            [[ $sub == detail ]] && opts="--json --test --help" || opts="--help"
            if [[ $cur != -* ]]; then
                COMPREPLY=($(compgen -W "$(_mdextctl_md_devices)" -- "$cur"))
                return
            fi
            ;;
        status)
            opts="--json --help"
            ;;
        examine-bitmap)
            opts="--json --help"
            ;;
        fail | remove | add)
            opts="--help"
            # First the array, then the device.
            local args=0
            for ((i = i + 1; i < cword; i++)); do
                [[ ${words[i]} != -* ]] && args=$((args + 1))
            done
            if [[ $cur != -* && $args -eq 0 ]]; then
                COMPREPLY=($(compgen -W "$(_mdextctl_md_devices)" -- "$cur"))
                return
            fi
            ;;
        help)
            COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
            return
            ;;
        *)
            return
            ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case $sub in
        create | examine | examine-bitmap | assemble | fail | remove | add)
            # Member devices: block devices, or image files.
            [[ -z $cur ]] && cur=/dev/
            _filedir
            ;;
    esac
} &&
    complete -F _mdextctl mdextctl

# ex: filetype=sh
