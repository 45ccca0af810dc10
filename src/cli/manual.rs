//! The manual page and the shell completions, rendered from the command line's clap definition
//! (`faspex-gate man`, hidden, and `faspex-gate completions bash|zsh|fish`). The Debian package's
//! build (`deploy/debian/build.sh`) runs both and installs what they print.

use clap::ValueEnum;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

/// The shells `faspex-gate completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script for `shell`, for a command named `faspex-gate`.
pub fn completions(cmd: &clap::Command, shell: Shell) -> Vec<u8> {
    use clap_complete::Shell as S;
    let generator = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    // Rendered into memory: clap_complete panics on a failed write, and stdout may be closed.
    let mut out = Vec::new();
    let mut cmd = cmd.clone();
    clap_complete::generate(generator, &mut cmd, BIN, &mut out);
    out
}

/// The binary's name, as the completions and the manual page call it.
const BIN: &str = "faspex-gate";

/// What the manual page says besides the commands and their options: the files, exit codes,
/// environment and where the rest is documented.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/faspex-gate/faspex-gate.toml",
        "The configuration (the default for --config). Every key is explained in the file.",
    ),
    (
        "/etc/faspex-gate/session.key, /etc/faspex-gate/admin.token",
        "The session secret and the admin API token, mode 0600, owned by faspex-gate. The package \
         makes them when they are missing and never replaces one.",
    ),
    (
        "/var/lib/faspex-gate",
        "The embedded store (store.path): sessions, seats and lockouts.",
    ),
    (
        "/var/log/faspex-gate",
        "The audit log, when audit.path points there.",
    ),
    (
        "/usr/share/faspex-gate",
        "The Prometheus alert rules and the Grafana dashboard.",
    ),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Done."),
    ("1", "Failed, or (admin) refused by the gateway."),
    (
        "2",
        "A usage or configuration error: the message names the file and the key. systemd does \
         not restart the service after it.",
    ),
    ("3", "(admin) The gateway could not be reached."),
];

/// What the page's DESCRIPTION says.
const DESCRIPTION: &str = "faspex-gate sits in front of IBM Aspera Faspex: it checks each login \
against the directory (or a users file), enforces the licence seat limit, one client per account, \
idle timeouts and account lockouts, and forwards everything else to Faspex unchanged. It runs as \
the faspex-gate system account under systemd (faspex-gate.service). Run check-config after every \
edit of the configuration, then systemctl reload faspex-gate.";

/// The manual page faspex-gate(1), in roff: clap_mangen renders the title, name, synopsis and
/// description from the command line's definition; then every command with its options on the
/// one page, the files, the exit codes and the environment.
pub fn man_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let cmd = cmd.clone().name(BIN).bin_name(BIN).long_about(DESCRIPTION);
    let man = clap_mangen::Man::new(cmd.clone())
        .title("FASPEX-GATE")
        .manual("faspex-gate manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut roff, &[BIN], sub);
    }
    roff.control("SH", ["FILES"]);
    for (name, what) in FILES {
        roff.control("TP", []);
        roff.text([bold(*name)]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, what) in EXIT_STATUS {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold("FASPEX_GATE_CONFIG")]);
    roff.text([roman("The configuration file when --config is not given.")]);
    roff.control("TP", []);
    roff.text([bold("FASPEX_GATE__SECTION__KEY")]);
    roff.text([roman(
        "Overrides one configuration key, e.g. FASPEX_GATE__POLICY__IDLE_TIMEOUT=30m.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), journalctl(1), and the deployment guide, \
         /usr/share/doc/faspex-gate/deploy.md.",
    )]);
    roff.to_writer(&mut out)?;
    Ok(out)
}

/// One command: its usage line, what it does, its options, and its own commands (admin's).
fn command(roff: &mut Roff, parents: &[&str], cmd: &clap::Command) {
    let mut usage: Vec<Inline> = vec![bold(format!("{} {}", parents.join(" "), cmd.get_name()))];
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
        .collect();
    for arg in &args {
        usage.push(roman(" "));
        if arg.is_required_set() {
            usage.extend(arg_usage(arg));
        } else {
            usage.push(roman("["));
            usage.extend(arg_usage(arg));
            usage.push(roman("]"));
        }
    }
    if cmd.has_subcommands() {
        usage.push(roman(" "));
        usage.push(italic("ACTION"));
    }
    roff.control("TP", []);
    roff.text(usage);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        roff.text([roman(about.to_string())]);
    }
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    // (an argument without help, such as USER, is explained by the command's own line)
    let helped: Vec<(&clap::Arg, String)> = args
        .iter()
        .filter_map(|a| Some((*a, a.get_long_help().or_else(|| a.get_help())?.to_string())))
        .collect();
    if helped.is_empty() && subs.is_empty() {
        return;
    }
    roff.control("RS", []);
    for (arg, help) in helped {
        roff.control("TP", []);
        roff.text(arg_usage(arg));
        roff.text([roman(help)]);
    }
    let mut here = parents.to_vec();
    here.push(cmd.get_name());
    for sub in subs {
        command(roff, &here, sub);
    }
    roff.control("RE", []);
}

/// `--config FILE`, `--json` or `USER` as roff (roff escapes the hyphens).
fn arg_usage(arg: &clap::Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    let mut out = Vec::new();
    match arg.get_long() {
        Some(long) => {
            out.push(bold(format!("--{long}")));
            if arg.get_action().takes_values() {
                out.push(roman(" "));
                out.push(italic(value));
            }
        }
        None => out.push(italic(value)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        <crate::cli::Cli as clap::CommandFactory>::command()
    }

    #[test]
    fn completions_name_every_command_in_each_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completions(&cli(), shell)).unwrap();
            for word in [
                "check-config",
                "hash-password",
                "migrate-store",
                "unlock",
                "token-file",
            ] {
                assert!(text.contains(word), "{shell:?} completions lack {word}");
            }
        }
    }

    #[test]
    fn the_man_page_documents_every_command_its_files_and_exit_codes() {
        let page = String::from_utf8(man_page(&cli()).unwrap()).unwrap();
        assert!(page.contains("\n.TH FASPEX-GATE 1 "), "{page}");
        for word in [
            "check\\-config",
            "hash\\-password",
            "migrate\\-store",
            "faspex\\-gate admin unlock",
            "\\-\\-config",
            "/etc/faspex\\-gate/faspex\\-gate.toml",
            "EXIT STATUS",
            "FASPEX_GATE_CONFIG",
        ] {
            assert!(page.contains(word), "the man page lacks {word}:\n{page}");
        }
        // Hidden commands (man, and completions' own generator) stay out of the page.
        assert!(!page.contains("faspex\\-gate man "), "{page}");
    }
}
