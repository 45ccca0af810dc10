//! A real OpenLDAP `slapd` for the tests and the benchmark: its own configuration, database and
//! TLS certificate in a temporary folder, on free loopback ports, loaded from LDIF with `slapadd`.
//! Its `stats` log (every connection, BIND and SEARCH) is kept, so tests can check what reached
//! the directory.
//!
//! Without `slapd`, `slapadd` and `ldapwhoami` (Debian's `slapd` and `ldap-utils`), starting one
//! panics: LDAP tests fail, they never skip. `.ci/test` installs them.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "root-secret";
pub const SERVICE_DN: &str = "cn=faspex-gate,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "service secret";
pub const GROUP_DN: &str = "cn=faspex-users,ou=groups,dc=example,dc=org";
pub const DIRECT_TEMPLATE: &str = "uid={username},ou=people,dc=example,dc=org";
pub const USER_FILTER: &str = "(&(objectClass=inetOrgPerson)(|(uid={username})(cn={username})))";

/// The people in the directory: (uid, cn, password, in the faspex-users group).
pub const PEOPLE_ENTRIES: &[(&str, &str, &str, bool)] = &[
    ("ann", "Ann Smith", "ann-pw", true),
    ("bob", "Bob Jones", "bob-pw", false),
    ("admin", "Admin Person", "admin-pw", true),
    // Two entries with one cn: a search for "Twin" is ambiguous.
    ("twin1", "Twin", "twin-pw", true),
    ("twin2", "Twin", "twin-pw", true),
    // Three: the search's size limit of 2 is exceeded (two entries, then sizeLimitExceeded).
    ("trip1", "Triplet", "trip-pw", true),
    ("trip2", "Triplet", "trip-pw", true),
    ("trip3", "Triplet", "trip-pw", true),
    // No password at all: the directory refuses every bind, as it does for a disabled account.
    ("nopass", "No Password", "", true),
];

/// `n` extra users `userN` with password `pw-userN`, all in the group (for the benchmark).
pub fn bulk_people(n: usize) -> Vec<(String, String, String, bool)> {
    (0..n)
        .map(|i| {
            (
                format!("user{i}"),
                format!("User {i}"),
                format!("pw-user{i}"),
                true,
            )
        })
        .collect()
}

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: the LDAP tests need Debian's slapd and ldap-utils \
         (.ci/test installs them)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `{SSHA}` as slappasswd makes it: SHA-1 over password and salt, then the salt.
fn ssha(password: &str) -> String {
    use base64::Engine as _;
    let salt: [u8; 8] = rand::random();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(password.as_bytes());
    ctx.update(&salt);
    let mut v = ctx.finish().as_ref().to_vec();
    v.extend_from_slice(&salt);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(v)
    )
}

/// `attr: value`, or `attr:: BASE64` for a value LDIF cannot carry as it is (RFC 2849: not
/// ASCII, or with a leading space, colon or `<`, or a trailing space).
fn ldif_line(attr: &str, value: &str) -> String {
    use base64::Engine as _;
    let safe = value
        .bytes()
        .all(|b| b.is_ascii() && b != 0 && b != b'\n' && b != b'\r')
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        format!("{attr}: {value}\n")
    } else {
        format!(
            "{attr}:: {}\n",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

fn ldif(extra: &[(String, String, String, bool)]) -> String {
    let mut people: Vec<(String, String, String, bool)> = PEOPLE_ENTRIES
        .iter()
        .map(|(u, c, p, g)| (u.to_string(), c.to_string(), p.to_string(), *g))
        .collect();
    people.extend_from_slice(extra);
    let mut s = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: faspex-gate\nuserPassword: {}\n\n",
        ssha(SERVICE_PW)
    );
    for (uid, cn, pw, _) in &people {
        s.push_str(&ldif_line("dn", &format!("uid={uid},{PEOPLE}")));
        s.push_str("objectClass: inetOrgPerson\n");
        s.push_str(&ldif_line("uid", uid));
        s.push_str(&ldif_line("cn", cn));
        s.push_str(&ldif_line("sn", cn));
        if !pw.is_empty() {
            s.push_str(&format!("userPassword: {}\n", ssha(pw)));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "dn: {GROUP_DN}\nobjectClass: groupOfNames\ncn: faspex-users\n"
    ));
    for (uid, _, _, member) in &people {
        if *member {
            s.push_str(&ldif_line("member", &format!("uid={uid},{PEOPLE}")));
        }
    }
    s
}

/// A running slapd. Killed on drop.
pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    /// The test CA that signed slapd's certificate (for `auth.ldap.ca_file`).
    pub ca_file: PathBuf,
    child: Option<Child>,
}

impl Slapd {
    pub fn start() -> Slapd {
        Self::start_with(&[])
    }

    /// With a certificate for `names` only (instead of localhost and 127.0.0.1).
    pub fn start_named(names: &[&str]) -> Slapd {
        Self::start_full(&[], names)
    }

    /// With `extra` people besides [`PEOPLE_ENTRIES`].
    pub fn start_with(extra: &[(String, String, String, bool)]) -> Slapd {
        Self::start_full(extra, &["localhost", "127.0.0.1"])
    }

    fn start_full(extra: &[(String, String, String, bool)], names: &[&str]) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();

        // A test CA and a server certificate for localhost and 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "faspex-gate test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("server.key"), key.serialize_pem()).unwrap();

        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {d}/slapd.pid\n\
             TLSCACertificateFile {d}/ca.pem\n\
             TLSCertificateFile {d}/server.pem\n\
             TLSCertificateKeyFile {d}/server.key\n\
             loglevel stats\n\
             database mdb\n\
             maxsize 33554432\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PW}\n\
             directory {d}/db\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by users read by * none\n",
            d = d.display()
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        std::fs::write(d.join("data.ldif"), ldif(extra)).unwrap();
        let out = Command::new(program("slapadd"))
            .arg("-q")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(d.join("data.ldif"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca_file = d.join("ca.pem");
        let mut s = Slapd {
            port: free_port(),
            tls_port: free_port(),
            ca_file,
            dir,
            child: None,
        };
        // A port `free_port` found free can be taken by another process (a test's outgoing
        // connection, say) before slapd binds it: then new ports, a few times.
        for attempt in 1.. {
            s.spawn();
            match s.ready() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    let _ = std::fs::remove_file(s.dir.path().join("slapd.log"));
                    s.port = free_port();
                    s.tls_port = free_port();
                }
                Err(log) => panic!("slapd exited:\n{log}"),
            }
        }
        s
    }

    /// Start the server process (again, on the same ports and data).
    pub fn run(&mut self) {
        self.spawn();
        if let Err(log) = self.ready() {
            panic!("slapd exited:\n{log}");
        }
    }

    /// Start the server process, without waiting for it.
    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("slapd.log"))
            .unwrap();
        let child = Command::new(program("slapd"))
            .arg("-d")
            .arg("256")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.port, self.tls_port
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Wait until the server answers: `Err` with its log if it exited first.
    fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Anonymous, so that it leaves no BIND or SRCH line for the tests to trip on.
            let out = Command::new(program("ldapwhoami"))
                .args(["-x", "-o", "nettimeout=2", "-H"])
                .arg(self.url())
                .output()
                .unwrap();
            if out.status.success() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("({status})\n{}", self.log()));
                }
            }
            assert!(
                Instant::now() < deadline,
                "slapd did not answer within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://localhost:{}", self.tls_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("slapd is running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} slapd");
    }

    /// Freeze it (SIGSTOP): connections are accepted by the kernel, and nothing answers.
    /// Returns once every thread of slapd is stopped.
    pub fn hang(&self) {
        self.signal("STOP");
        let deadline = Instant::now() + Duration::from_secs(5);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        loop {
            let all_stopped = std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            });
            if all_stopped {
                return;
            }
            assert!(Instant::now() < deadline, "slapd did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Stop it for good (until [`Slapd::run`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Simple binds received (`BIND dn="…" method=128` lines) whose DN contains `needle`
    /// (case-insensitive: slapd logs DNs normalised).
    pub fn binds(&self, needle: &str) -> Vec<String> {
        let needle = needle.to_lowercase();
        self.log()
            .lines()
            .filter(|l| l.contains(" BIND dn=\"") && l.contains(" method=128"))
            // (the readiness probe's anonymous bind)
            .filter(|l| !l.contains(" BIND dn=\"\" "))
            .filter(|l| l.to_lowercase().contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    /// Every `BIND dn=` line.
    pub fn all_binds(&self) -> Vec<String> {
        self.binds("")
    }

    /// Every `SRCH … filter=` line.
    pub fn searches(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" SRCH ") && l.contains("filter="))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
    }
}
