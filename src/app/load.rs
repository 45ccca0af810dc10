//! What the configuration names, read when the app is built or reloaded: the users file, the
//! HTTPS listener's certificate and key, and the CA files of the upstream and the directory.
//!
//! `config` only checks that these files exist; here they are parsed, and an error is a
//! [`ConfigError`] naming the key, as validation's are (`check-config` and `run` exit 2 on it,
//! and a reload refuses the file). A users-file entry must be written as a login's account name
//! arrives after [`crate::account::normalize`], or it could never log in.

use rustls::sign::CertifiedKey;

use crate::auth::file::{parse_users, Users};
use crate::config::{AuthBackend, Config, ConfigError, LocalAccounts};

/// The files of a configuration, read and checked.
pub struct Loaded {
    /// `auth.file.path`, parsed (empty unless the backend or the local accounts are the file).
    pub users: Users,
    /// `tls.cert_file` and `tls.key_file`, paired (`None` when the HTTPS listener is off).
    pub cert: Option<CertifiedKey>,
}

impl Loaded {
    /// Read what `cfg` names, as a start with it would: the certificate when `server.listen` or
    /// the helpdesk console is on.
    pub fn load(cfg: &Config) -> Result<Loaded, ConfigError> {
        Self::load_for(
            cfg,
            cfg.server.listen.is_some() || cfg.helpdesk.on().is_some(),
        )
    }

    /// Read what `cfg` names; the certificate when `https` (the HTTPS listener that will serve
    /// it is on) and `cfg` names one.
    pub fn load_for(cfg: &Config, https: bool) -> Result<Loaded, ConfigError> {
        let users = users(cfg)?;
        let cert = match (https, &cfg.tls.cert_file, &cfg.tls.key_file) {
            (true, Some(c), Some(k)) => {
                let chain = crate::tls::load_certs(c)
                    .map_err(|e| cfg.error("tls.cert_file", format!("{e:#}")))?;
                let pair = crate::tls::certified_key(chain, c, k)
                    .map_err(|e| cfg.error("tls.key_file", format!("{e:#}")))?;
                Some(pair)
            }
            _ => None,
        };
        if let Some(ca) = &cfg.upstream.ca_file {
            crate::tls::ca_roots(ca)
                .map_err(|e| cfg.error("upstream.ca_file", format!("{e:#}")))?;
        }
        if let (AuthBackend::Ldap, Some(ca)) = (cfg.auth.backend, &cfg.auth.ldap.ca_file) {
            crate::tls::ca_roots(ca)
                .map_err(|e| cfg.error("auth.ldap.ca_file", format!("{e:#}")))?;
        }
        Ok(Loaded { users, cert })
    }
}

/// The users file, when the backend or the local accounts use it.
fn users(cfg: &Config) -> Result<Users, ConfigError> {
    const KEY: &str = "auth.file.path";
    let a = &cfg.auth;
    let (true, Some(path)) = (
        a.backend == AuthBackend::File || a.local_accounts == LocalAccounts::File,
        &a.file.path,
    ) else {
        return Ok(Users::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| cfg.error(KEY, format!("cannot read {}: {e}", path.display())))?;
    let domains = &cfg.policy.username_domains;
    parse_users(&text, |name| crate::account::normalize(name, domains).ok())
        .map_err(|why| cfg.error(KEY, format!("{}: {why}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// A directory with a session secret, a users file, a certificate and its key, and a
    /// configuration over them (file backend, HTTPS on) that `extra` lines amend.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let f = Files {
                dir: tempfile::tempdir().unwrap(),
            };
            crate::util::write_private(&f.path("session.key"), &[b'k'; 40]).unwrap();
            crate::tls::write_self_signed(f.dir.path(), &["localhost"]).unwrap();
            let hash = crate::auth::password::hash("pw").unwrap();
            f.write("users.toml", &format!("[users.ann]\nhash = \"{hash}\"\n"));
            f.write("junk.pem", "-----BEGIN CERTIFICATE-----\n");
            f
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        /// The configuration with `sections` appended (TOML, `{dir}` = the directory), and
        /// `env`.
        fn config(&self, sections: &str, env: &[(&str, &str)]) -> Config {
            let d = self.dir.path().display().to_string();
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [admin]\nlisten = \"\"\n\
                 [session]\nsecret_file = \"{d}/session.key\"\n\
                 [store]\npath = \"{d}/state\"\n{}",
                sections.replace("{dir}", &d)
            );
            let path = self.write("faspex-gate.toml", &text);
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.replace("{dir}", &d)))
                .collect();
            Config::load_with_env(&path, &env).unwrap()
        }
    }

    const FILE_BACKEND: &str =
        "[auth]\nbackend = \"file\"\n[auth.file]\npath = \"{dir}/users.toml\"\n";
    const LDAP_BACKEND: &str = "[auth]\nbackend = \"ldap\"\n[auth.ldap]\n\
        urls = [\"ldaps://dc1.example.org\"]\n\
        user_dn_template = \"uid={username},dc=example,dc=org\"\n";

    #[track_caller]
    fn fails(cfg: &Config, key: &str, needle: &str) {
        match Loaded::load(cfg) {
            Ok(_) => panic!("expected an error for {key}"),
            Err(e) => {
                assert_eq!(e.key, key, "wrong key in: {e}");
                assert!(e.reason.contains(needle), "{needle:?} not in: {e}");
                assert!(e.to_string().contains("faspex-gate.toml"), "{e}");
            }
        }
    }

    #[test]
    fn the_users_file_is_parsed_and_a_bad_entry_names_the_key() {
        let f = Files::new();
        let loaded = Loaded::load(&f.config(FILE_BACKEND, &[])).unwrap();
        assert_eq!(loaded.users.0.len(), 1);
        assert!(loaded.cert.is_some(), "the HTTPS listener's certificate");

        // A bad entry stops the load, naming the file and the entry.
        f.write("users.toml", "[users.ann]\nhash = \"plaintext\"\n");
        fails(
            &f.config(FILE_BACKEND, &[]),
            "auth.file.path",
            "users.toml: users.ann.hash: not a PHC hash string",
        );
        // A name written other than logins arrive, after `policy.username_domains` too.
        let hash = crate::auth::password::hash("pw").unwrap();
        f.write("users.toml", &format!("[users.Ann]\nhash = \"{hash}\"\n"));
        fails(&f.config(FILE_BACKEND, &[]), "auth.file.path", "users.Ann");
        f.write(
            "users.toml",
            &format!("[users.\"HUTCH\\\\ann\"]\nhash = \"{hash}\"\n"),
        );
        let domains = format!("{FILE_BACKEND}[policy]\nusername_domains = [\"HUTCH\"]\n");
        fails(&f.config(&domains, &[]), "auth.file.path", "\"ann\"");
        // Set by the environment, the error says so.
        let cfg = f.config(
            "[auth]\nbackend = \"file\"\n",
            &[("FASPEX_GATE__AUTH__FILE__PATH", "{dir}/users.toml")],
        );
        fails(&cfg, "auth.file.path", "FASPEX_GATE__AUTH__FILE__PATH");
        // Unused, it is not read.
        assert_eq!(
            Loaded::load(&f.config(LDAP_BACKEND, &[]))
                .unwrap()
                .users
                .0
                .len(),
            0
        );
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let f = Files::new();
        let cfg = f.config(
            FILE_BACKEND,
            &[("FASPEX_GATE__UPSTREAM__CA_FILE", "{dir}/junk.pem")],
        );
        fails(&cfg, "upstream.ca_file", "junk.pem");
        let ldap = |ca: &str| format!("{LDAP_BACKEND}ca_file = \"{{dir}}/{ca}\"\n");
        fails(
            &f.config(&ldap("junk.pem"), &[]),
            "auth.ldap.ca_file",
            "junk.pem",
        );
        fails(
            &f.config(&ldap("users.toml"), &[]),
            "auth.ldap.ca_file",
            "contains no PEM certificate",
        );
        assert!(Loaded::load(&f.config(&ldap("cert.pem"), &[])).is_ok());
    }

    #[test]
    fn the_listener_certificate_must_load_and_match_its_key() {
        let f = Files::new();
        let other = f.path("other");
        std::fs::create_dir(&other).unwrap();
        crate::tls::write_self_signed(&other, &["localhost"]).unwrap();
        let with = |cert: &Path, key: &Path| {
            f.config(
                FILE_BACKEND,
                &[
                    ("FASPEX_GATE__TLS__CERT_FILE", &cert.display().to_string()),
                    ("FASPEX_GATE__TLS__KEY_FILE", &key.display().to_string()),
                ],
            )
        };
        fails(
            &with(&f.path("junk.pem"), &f.path("key.pem")),
            "tls.cert_file",
            "junk.pem",
        );
        fails(
            &with(&f.path("cert.pem"), &other.join("key.pem")),
            "tls.key_file",
            "do not belong together",
        );
        // With the HTTPS listener off, the certificate is not read.
        let cfg = f.config(
            FILE_BACKEND,
            &[
                ("FASPEX_GATE__SERVER__LISTEN", ""),
                ("FASPEX_GATE__SERVER__HTTP_LISTEN", "127.0.0.1:0"),
                ("FASPEX_GATE__TLS__CERT_FILE", "{dir}/junk.pem"),
            ],
        );
        assert!(Loaded::load(&cfg).unwrap().cert.is_none());
        // A reload reads it for the listener that is running.
        assert!(Loaded::load_for(&cfg, true).is_err());
    }
}
