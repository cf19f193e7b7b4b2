#!/usr/bin/env bash
# Install the Outpost agent or collector as a systemd service, or remove it again.
#
#   deploy/install.sh agent|collector [--prefix DIR] [--from PATH_OR_WHEEL] [--config FILE]
#   deploy/install.sh agent|collector --uninstall [--prefix DIR]
#
# Installing: a venv in PREFIX/venv (default /opt/outpost/venv) with Outpost from --from (a
# source tree or a .whl; default: the tree this script is in), the system user `outpost`, the
# config ETC/<role>.yaml (default /etc/outpost; from --config FILE or the commented example,
# only when it does not exist yet: an existing config is never overwritten), and the unit
# outpost-<role>.service in /etc/systemd/system. When systemd runs, the unit is enabled and
# started, or restarted when Outpost or the unit changed. A config that is still the untouched
# example is not started: edit it first. Running it again changes nothing, and says so.
#
# Uninstalling stops and disables the unit and removes it and the venv (the venv stays while
# the other role still uses it). The config and the state directory are kept.
#
# Exit codes:
#   0  done, or nothing to do
#   1  a step failed (the message names it; the steps before it stay done)
#   2  usage: a bad argument, a missing --from or --config, not root, no Python 3.11
#   3  installed, but the service is not started: its config is the untouched example or
#      fails `outpost <role> check` (printed above); fix it, then run this again
#
# Environment (for tests, images and offline sites):
#   OUTPOST_PREFIX       install prefix, as --prefix (default /opt/outpost)
#   OUTPOST_ETC          config directory (default /etc/outpost)
#   OUTPOST_UNIT_DIR     where the unit goes (default /etc/systemd/system)
#   OUTPOST_BIN_DIR      where the `outpost` command is linked (default /usr/local/bin)
#   OUTPOST_SKIP_USER=1  do not create the user `outpost` nor give it files; root is then
#                        not required
#   OUTPOST_PYTHON       the Python that makes the venv (default python3, 3.11 or later)
#   OUTPOST_VENV_ARGS    more arguments to `python -m venv`, e.g. --system-site-packages
#   OUTPOST_PIP_ARGS     more arguments to `pip install`, e.g. for a site without Internet
#                        "--no-index --find-links /media/usb/wheels"
#   OUTPOST_SYSTEMD_DIR  systemd runs when this exists (default /run/systemd/system)
#   OUTPOST_SYSTEMCTL    the systemctl program (default systemctl)
set -Eeuo pipefail

EX_FAIL=1
EX_USAGE=2
EX_NOT_STARTED=3
SERVICE_USER=outpost

usage() {
    sed -n '2,/^set -Eeuo/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    local code=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}
# shellcheck disable=SC2317 # called by the trap
on_error() { # any other failing command: name it, exit 1
    printf 'error: command failed (exit %s, line %s): %s\n' "$1" "$2" "$3" >&2
    exit "$EX_FAIL"
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

# --- arguments -------------------------------------------------------------------------------

role=""
uninstall=0
prefix=${OUTPOST_PREFIX:-/opt/outpost}
from=""
config=""
while [ $# -gt 0 ]; do
    case $1 in
        agent | collector)
            [ -z "$role" ] || die $EX_USAGE "give one role, agent or collector"
            role=$1
            ;;
        --uninstall) uninstall=1 ;;
        --prefix | --from | --config)
            [ $# -ge 2 ] || die $EX_USAGE "$1 needs a value"
            case $1 in
                --prefix) prefix=$2 ;;
                --from) from=$2 ;;
                --config) config=$2 ;;
            esac
            shift
            ;;
        --prefix=*) prefix=${1#*=} ;;
        --from=*) from=${1#*=} ;;
        --config=*) config=${1#*=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die $EX_USAGE "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[ -n "$role" ] || die $EX_USAGE "which role: deploy/install.sh agent|collector [...] (see --help)"
if [ $uninstall -eq 1 ] && { [ -n "$from" ] || [ -n "$config" ]; }; then
    die $EX_USAGE "--from and --config are for installing, not with --uninstall"
fi

etc=${OUTPOST_ETC:-/etc/outpost}
unit_dir=${OUTPOST_UNIT_DIR:-/etc/systemd/system}
bin_dir=${OUTPOST_BIN_DIR:-/usr/local/bin}
systemd_dir=${OUTPOST_SYSTEMD_DIR:-/run/systemd/system}
systemctl=${OUTPOST_SYSTEMCTL:-systemctl}
python=${OUTPOST_PYTHON:-python3}
skip_user=${OUTPOST_SKIP_USER:-0}
read -r -a venv_args <<<"${OUTPOST_VENV_ARGS:-}"
read -r -a pip_args <<<"${OUTPOST_PIP_ARGS:-}"

for path in "$prefix" "$etc" "$unit_dir"; do
    case $path in
        *[[:space:]]*) die $EX_USAGE "'$path': paths with spaces are not supported" ;;
        / | //) die $EX_USAGE "'$path' cannot be a prefix or config directory" ;;
        /*) ;;
        *) die $EX_USAGE "'$path' is not an absolute path" ;;
    esac
done
prefix=${prefix%/}
etc=${etc%/}
unit_dir=${unit_dir%/}

if [ "$(id -u)" -ne 0 ] && [ "$skip_user" != 1 ]; then
    die $EX_USAGE "run as root (sudo $0 ...): it creates a user and writes to $etc and $unit_dir"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
unit=outpost-$role.service
unit_path=$unit_dir/$unit
template=$here/systemd/$unit
venv=$prefix/venv
marker=$venv/.outpost-source
cfg=$etc/$role.yaml
state_dir=/var/lib/outpost-$role
if [ "$role" = agent ]; then other=collector; else other=agent; fi

changes=0
changed() {
    changes=$((changes + 1))
    say "  $*"
}
unchanged() { say "  $*"; }
systemd_running() { [ -d "$systemd_dir" ]; }

# The unit as installed: the template with the prefix and the config directory filled in.
render_unit() {
    local text
    text=$(<"$template")
    text=${text//"/opt/outpost"/"$prefix"}
    printf '%s\n' "${text//"/etc/outpost"/"$etc"}"
}

# A commented example config, with /etc/outpost replaced by the config directory.
render_example() {
    local text
    text=$(<"$1")
    printf '%s\n' "${text//"/etc/outpost"/"$etc"}"
}

give_to_service() { # PATH: group outpost may read it
    [ "$skip_user" = 1 ] || chgrp "$SERVICE_USER" "$1"
}

# ETC/NAME from SOURCE (a config the user gave, or an example), only when it does not exist.
install_config() {
    local dest=$1 source=$2 kind=$3 tmp
    if [ -e "$dest" ]; then
        if [ "$kind" = given ] && ! cmp -s "$source" "$dest"; then
            warn "kept $dest, which differs from $source: an existing config is never" \
                "overwritten (compare: diff $dest $source)"
        fi
        unchanged "config $dest kept as it is"
        return
    fi
    if [ ! -d "$etc" ]; then
        install -d -m 0750 "$etc"
        give_to_service "$etc"
        changed "created $etc"
    fi
    tmp=$(mktemp "$dest.XXXXXX")
    if [ "$kind" = given ]; then cat "$source" >"$tmp"; else render_example "$source" >"$tmp"; fi
    chmod 0640 "$tmp"
    give_to_service "$tmp"
    mv "$tmp" "$dest"
    if [ "$kind" = given ]; then
        changed "wrote $dest from $source"
    else
        changed "wrote $dest from the example $source: edit it"
    fi
}

# --- uninstall -------------------------------------------------------------------------------

if [ $uninstall -eq 1 ]; then
    say "outpost-$role: uninstalling"
    if [ -f "$unit_path" ]; then
        if systemd_running; then
            if "$systemctl" is-enabled --quiet "$unit" 2>/dev/null ||
                "$systemctl" is-active --quiet "$unit" 2>/dev/null; then
                "$systemctl" disable --now --quiet "$unit" ||
                    die $EX_FAIL "could not stop and disable $unit (see: systemctl status $unit)"
                changed "stopped and disabled $unit"
            fi
        else
            unchanged "systemd is not running (no $systemd_dir): nothing to stop"
        fi
        rm -f "$unit_path"
        changed "removed $unit_path"
        if systemd_running; then "$systemctl" daemon-reload; fi
    fi
    if [ -d "$unit_path.d" ]; then
        unchanged "kept the drop-ins in $unit_path.d (from systemctl edit); remove them with:" \
            "rm -r $unit_path.d"
    fi
    if [ -e "$venv" ]; then
        if [ -f "$unit_dir/outpost-$other.service" ]; then
            unchanged "kept the venv $venv: outpost-$other still runs from it"
        elif [ ! -f "$venv/pyvenv.cfg" ]; then
            warn "$venv is not a Python venv: left alone"
        else
            rm -rf "$venv"
            changed "removed the venv $venv"
            if [ "$(readlink "$bin_dir/outpost" 2>/dev/null)" = "$venv/bin/outpost" ]; then
                rm -f "$bin_dir/outpost"
                changed "removed the command $bin_dir/outpost"
            fi
            rmdir "$prefix" 2>/dev/null && changed "removed the empty $prefix"
        fi
    fi
    if [ $changes -eq 0 ]; then
        say "nothing to remove: outpost-$role is not installed here"
    fi
    if [ "$role" = agent ]; then
        kept="$cfg and the state directory $state_dir (the outbox: what the collector has not"
        kept="$kept acknowledged yet)"
        remove="$cfg $state_dir"
    else
        kept="$cfg, $etc/sites.yaml and the state directory $state_dir (seq bookkeeping and"
        kept="$kept alert state)"
        remove="$cfg $etc/sites.yaml $state_dir"
    fi
    say "kept $kept. To remove them too:"
    say "  rm -rf $remove"
    if [ ! -f "$unit_dir/outpost-$other.service" ]; then
        say "  userdel $SERVICE_USER    # and $etc, when nothing of Outpost is left in it"
    fi
    exit 0
fi

# --- install ---------------------------------------------------------------------------------

[ -f "$template" ] || die $EX_USAGE "missing $template: run this script from an Outpost tree"
[ -n "$from" ] || from=$repo
if [ -d "$from" ]; then
    [ -f "$from/pyproject.toml" ] || die $EX_USAGE "--from $from: no pyproject.toml there"
    from=$(cd "$from" && pwd)
    source_kind=tree
    examples=$from/config
    [ -d "$examples" ] || examples=$repo/config
elif [ -f "$from" ] && [[ $from == *.whl ]]; then
    from=$(cd "$(dirname "$from")" && pwd)/$(basename "$from")
    source_kind=wheel
    examples=$repo/config
else
    die $EX_USAGE "--from $from: neither an Outpost source tree nor a .whl file"
fi
if [ -n "$config" ]; then
    { [ -f "$config" ] && [ -r "$config" ]; } ||
        die $EX_USAGE "--config $config: no such readable file"
    config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
fi
[ -f "$examples/$role.yaml" ] || die $EX_USAGE "missing the example $examples/$role.yaml"

say "outpost-$role: installing into $venv, $etc and $unit_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" # Python puts the working directory on sys.path: keep a checkout out of it

# The user. The unit names it; systemd creates the state directory for it.
if [ "$skip_user" = 1 ]; then
    unchanged "user $SERVICE_USER: not checked (OUTPOST_SKIP_USER=1)"
elif getent passwd "$SERVICE_USER" >/dev/null; then
    unchanged "user $SERVICE_USER exists"
else
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell "$(command -v nologin || echo /usr/sbin/nologin)" \
        --comment "Outpost monitoring" "$SERVICE_USER" ||
        die $EX_FAIL "could not create the system user $SERVICE_USER"
    changed "created the system user $SERVICE_USER"
fi
if [ "$role" = agent ] && [ "$skip_user" != 1 ]; then
    for group in adm systemd-journal; do
        getent group "$group" >/dev/null ||
            warn "there is no group $group, which the unit's SupplementaryGroups= names:" \
                "systemd will not start it. Create it (groupadd --system $group) or drop it" \
                "with: systemctl edit $unit"
    done
fi

# The venv. What it was installed from is fingerprinted: the same source installs nothing.
if [ $source_kind = tree ]; then
    # Build from a copy, so that the source tree is never written to (build/, *.egg-info).
    mkdir "$work/src"
    tar -C "$from" --exclude='./.*' --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
    fingerprint=$(cd "$work/src" && find . -type f -print0 | LC_ALL=C sort -z |
        xargs -0 -r sha256sum | sha256sum)
    target=$work/src
else
    fingerprint=$(sha256sum <"$from")
    target=$from
fi
fingerprint=${fingerprint%% *}
venv_changed=0
if [ -x "$venv/bin/outpost" ] && [ "$(cut -d' ' -f1 "$marker" 2>/dev/null)" = "$fingerprint" ] &&
    "$venv/bin/outpost" --help >/dev/null 2>&1; then
    unchanged "venv $venv is up to date with $from"
else
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
        command -v "$python" >/dev/null ||
            die $EX_USAGE "no $python: install Python 3.11 or later (Debian: apt install" \
                "python3 python3-venv), or name one in OUTPOST_PYTHON"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
            die $EX_USAGE "$python is older than 3.11; name a newer one in OUTPOST_PYTHON"
        mkdir -p "$prefix"
        "$python" -m venv --clear "${venv_args[@]}" "$venv" ||
            die $EX_FAIL "could not create the venv $venv (Debian: apt install python3-venv)"
        changed "created the venv $venv"
    fi
    pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
    "${pip[@]}" install "${pip_args[@]}" "$target" ||
        die $EX_FAIL "pip could not install $from into $venv (its messages are above)"
    if [ $source_kind = wheel ]; then
        # pip keeps an installed version equal to the wheel's; a rebuilt wheel must replace it.
        "${pip[@]}" install --no-deps --force-reinstall "${pip_args[@]}" "$target" ||
            die $EX_FAIL "pip could not install $from into $venv (its messages are above)"
    fi
    "$venv/bin/outpost" --help >/dev/null ||
        die $EX_FAIL "$venv/bin/outpost does not run after installing (its error is above)"
    printf '%s %s %s\n' "$fingerprint" "$source_kind" "$from" >"$marker"
    changed "installed Outpost into $venv from $from"
    venv_changed=1
fi

# The command on PATH, as the docs call it.
if [ "$(readlink "$bin_dir/outpost" 2>/dev/null)" = "$venv/bin/outpost" ]; then
    unchanged "$bin_dir/outpost runs $venv/bin/outpost"
elif [ -e "$bin_dir/outpost" ] || [ -L "$bin_dir/outpost" ]; then
    warn "$bin_dir/outpost exists and is not ours: left alone (use $venv/bin/outpost)"
else
    mkdir -p "$bin_dir"
    ln -s "$venv/bin/outpost" "$bin_dir/outpost"
    changed "linked $bin_dir/outpost to $venv/bin/outpost"
fi

# The config, and for the collector the inventory its example names.
if [ -n "$config" ]; then
    install_config "$cfg" "$config" given
else
    install_config "$cfg" "$examples/$role.yaml" example
fi
if [ "$role" = collector ] && grep -q "^sites_file: *$etc/sites.yaml" "$cfg"; then
    install_config "$etc/sites.yaml" "$examples/sites.yaml" example
fi
if [ "$skip_user" != 1 ] && command -v setpriv >/dev/null &&
    ! setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups test -r "$cfg"; then
    warn "the user $SERVICE_USER cannot read $cfg: chgrp $SERVICE_USER $etc $cfg &&" \
        "chmod g+rx $etc && chmod g+r $cfg"
fi

# The unit.
render_unit >"$work/unit"
unit_changed=0
if [ -f "$unit_path" ] && cmp -s "$work/unit" "$unit_path"; then
    unchanged "unit $unit_path is up to date"
else
    mkdir -p "$unit_dir"
    verb=installed
    [ -f "$unit_path" ] && verb=updated
    install -m 0644 "$work/unit" "$unit_path"
    changed "$verb the unit $unit_path"
    unit_changed=1
fi

# Whether the service may start: not with the untouched example, nor a config that fails check.
blocker=""
if render_example "$examples/$role.yaml" | cmp -s - "$cfg"; then
    blocker="$cfg is still the example: set at least"
    if [ "$role" = agent ]; then
        blocker="$blocker site, host and broker in it"
    else
        blocker="$blocker broker and listen in it, and the sites in $etc/sites.yaml"
    fi
elif ! check=$("$venv/bin/outpost" "$role" check --config "$cfg" 2>&1); then
    printf '%s\n' "$check" >&2
    blocker="$cfg does not pass 'outpost $role check' (above)"
fi

rc=0
if systemd_running; then
    # A blocked service is neither started nor enabled: it would start at the next boot.
    need_enable=0
    need_start=0
    need_restart=0
    if "$systemctl" is-active --quiet "$unit" 2>/dev/null; then
        if [ $((venv_changed + unit_changed)) -gt 0 ]; then
            if [ -n "$blocker" ]; then
                warn "not restarting $unit: $blocker; it runs the previous version meanwhile"
                rc=$EX_NOT_STARTED
            else
                need_restart=1
            fi
        fi
    elif [ -n "$blocker" ]; then
        rc=$EX_NOT_STARTED
    else
        need_start=1
    fi
    if [ -z "$blocker" ] && ! "$systemctl" is-enabled --quiet "$unit" 2>/dev/null; then
        need_enable=1
    fi
    if [ $((unit_changed + need_enable + need_start + need_restart)) -gt 0 ]; then
        "$systemctl" daemon-reload
    fi
    if [ $need_enable -eq 1 ]; then
        "$systemctl" enable --quiet "$unit" || die $EX_FAIL "could not enable $unit"
        changed "enabled $unit (it starts at boot)"
    fi
    if [ $need_start -eq 1 ]; then
        "$systemctl" start "$unit" ||
            die $EX_FAIL "$unit did not start; see: journalctl -u $unit -n 50"
        changed "started $unit"
    elif [ $need_restart -eq 1 ]; then
        "$systemctl" restart "$unit" ||
            die $EX_FAIL "$unit did not restart; see: journalctl -u $unit -n 50"
        changed "restarted $unit to run what changed"
    elif [ $rc -eq 0 ]; then
        unchanged "$unit is enabled and running"
    fi
    if [ $venv_changed -eq 1 ] &&
        "$systemctl" is-active --quiet "outpost-$other.service" 2>/dev/null; then
        "$systemctl" try-restart "outpost-$other.service" ||
            die $EX_FAIL "outpost-$other.service did not restart; see: journalctl -u outpost-$other"
        changed "restarted outpost-$other.service, which runs from the same venv"
    fi
else
    say "systemd is not running here (no $systemd_dir): the unit is installed, not enabled."
    say "  Where systemd runs: systemctl daemon-reload && systemctl enable --now $unit"
    say "  Or in the foreground: $venv/bin/outpost $role run --config $cfg"
    [ -z "$blocker" ] || rc=$EX_NOT_STARTED
fi

if [ $changes -eq 0 ]; then
    say "nothing changed: outpost-$role was already installed like this"
else
    say "done: $changes change(s)"
fi
if [ $rc -eq $EX_NOT_STARTED ]; then
    say "not started: $blocker. Then run this again (or: systemctl start $unit)."
fi
exit $rc
