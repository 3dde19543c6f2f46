# A Java runtime for METEOR and the PTB tokenizer, sourced by _env.sh and gpu_check.sh: the one on
# PATH; else, as root on a machine with apt-get, default-jre-headless is installed; else an error.
if ! command -v java >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[s2vt] installing a Java runtime (default-jre-headless) for METEOR"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null
    else
        echo "[s2vt] error: no Java runtime found; METEOR and the PTB tokenizer need one." >&2
        echo "       install it, e.g.: sudo apt-get install default-jre-headless" >&2
        exit 1
    fi
fi
