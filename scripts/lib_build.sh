# The build: which target directory this checkout builds in, and the workspace build.
# Sourced by scripts/lib.sh (which sets ROOT, the ORDERFLOW_* defaults, log and die).

# The build goes outside the checkout, to $ORDERFLOW_CACHE/target, shared by checkouts so that
# dependencies build once. Cargo decides a workspace crate is up to date by file times, not
# contents, so a checkout whose files are older than another checkout's build would run that
# build. The directory therefore records the checkout that built in it last
# (.orderflow-checkout); another checkout first removes the workspace's own artifacts there
# (dependencies stay) and rebuilds them. A checkout holds the directory (a shared flock on fd 9,
# inherited by what it starts) while its script runs; a different checkout arriving meanwhile
# builds in a directory of its own, $ORDERFLOW_CACHE/target-<checkout hash>. A CARGO_TARGET_DIR
# set by the caller is used as it is.
choose_target_dir() {
    [ -n "${CARGO_TARGET_DIR:-}" ] && return
    local shared="$ORDERFLOW_CACHE/target" marker last
    marker="$shared/.orderflow-checkout"
    mkdir -p "$shared"
    exec 9>>"$shared/.orderflow-lock"
    flock -s 9
    if [ "$(cat "$marker" 2>/dev/null)" != "$ROOT" ]; then
        flock -u 9
        if ! flock -x -n 9; then
            export CARGO_TARGET_DIR="$ORDERFLOW_CACHE/target-$(printf %s "$ROOT" | sha256sum | cut -c1-12)"
            log "another checkout is using $shared; building this one in $CARGO_TARGET_DIR"
            return
        fi
        last="$(cat "$marker" 2>/dev/null || true)"
        if [ -n "$last" ] && [ "$last" != "$ROOT" ]; then
            log "$shared was last built from $last: removing the workspace's artifacts there (dependencies stay)"
            local members
            members="$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 |
                python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')"
            # shellcheck disable=SC2086 # one -p per package
            (cd "$ROOT" && CARGO_TARGET_DIR="$shared" cargo clean --quiet $members)
            (cd "$ROOT" && CARGO_TARGET_DIR="$shared" cargo clean --quiet --release $members)
        fi
        printf '%s\n' "$ROOT" >"$marker"
        flock -s 9
    fi
    export CARGO_TARGET_DIR="$shared"
}
choose_target_dir

build_workspace() {
    log "building the workspace ($ORDERFLOW_PROFILE, target: $CARGO_TARGET_DIR)"
    local flags=(--workspace --bins --quiet)
    [ "$ORDERFLOW_PROFILE" = release ] && flags+=(--release)
    (cd "$ROOT" && cargo build "${flags[@]}")
}
