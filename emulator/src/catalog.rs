//! What the emulated Faspex holds: the seeded packages, the public links to them (external
//! deliveries with 40-hex passcodes, an invitation, a dropbox), and the transfer artefacts Faspex
//! hands out for them: `faspe://` links in the shape of the seed tutorial, and `ATM2_` tokens.
//!
//! Every signed-in user finds every package in each mailbox: the emulator stands in front of a
//! gateway, it is not a Faspex clone, and tests with their own users must still see packages.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// The ids of the seeded packages, in mailbox order (newest last).
pub const PACKAGE_IDS: [u64; 3] = [4044, 4045, BIG_PACKAGE_ID];

/// The large package: [`crate::EmulatorConfig::big_package_bytes`] long.
pub const BIG_PACKAGE_ID: u64 = 4046;

/// The external delivery of the seed tutorial (`/external_deliveries/4822?passcode=7e1b…`); it
/// delivers package 4045.
pub const EXTERNAL_DELIVERY_ID: u64 = 4822;

/// The passcode of [`EXTERNAL_DELIVERY_ID`], as printed in the seed tutorial.
pub const EXTERNAL_DELIVERY_PASSCODE: &str = "7e1b56a2206506bcb1d47beb33598b12d2a8507a";

/// The passcode (or `token`) of the one open invitation to submit
/// (`/external/submissions/new?passcode=…`).
pub const INVITATION_PASSCODE: &str = "3c9f0d6a1b7e4c2f8a5d9e0b6c3f7a1d2e8b4c60";

/// The passcode (or `token`) of the public dropbox link
/// (`/external/dropbox_submissions/new?passcode=…`).
pub const DROPBOX_PASSCODE: &str = "b17e2d93c4a5f60718293a4b5c6d7e8f90a1b2c3";

/// The external delivery of the large package: id 4823, passcode below.
const BIG_EXTERNAL_DELIVERY: (u64, &str) = (4823, "d0c5a1e8f3b7925460a1b2c3d4e5f60718293a4b");

/// Characters percent-encoded in the path of a `faspe://` link (spaces above all: titles have them).
const FASPE_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// One package in every mailbox.
#[derive(Clone, Debug)]
pub struct Package {
    pub id: u64,
    pub title: &'static str,
    pub note: &'static str,
    /// Account name of the sender.
    pub sender: &'static str,
    /// The package's uuid (`_pkg_uuid` in the transfer cookie, and in the storage path).
    pub uuid: &'static str,
    /// The delivery's uuid (the `d:` part of the transfer cookie).
    pub delivery_uuid: &'static str,
    /// When it was sent, RFC 3339 in UTC.
    pub created: &'static str,
    pub files: &'static [&'static str],
    /// Total size in bytes: what the HTTP Gateway streams.
    pub size: u64,
}

/// A package sent to an outside email address, reachable without an account.
#[derive(Clone, Debug)]
pub struct ExternalDelivery {
    pub id: u64,
    pub package_id: u64,
    pub passcode: &'static str,
    pub recipient: &'static str,
}

/// Everything the emulated Faspex holds.
pub struct Catalog {
    packages: Vec<Package>,
    external: Vec<ExternalDelivery>,
}

impl Catalog {
    /// The seeded catalog; the large package is `big_package_bytes` long.
    pub fn seeded(big_package_bytes: u64) -> Self {
        let packages = vec![
            Package {
                id: 4044,
                title: "Quarterly figures",
                note: "The spreadsheet and the summary for the board.",
                sender: "ann",
                uuid: "5f0c2d5e-4044-4b1a-9c62-8e1f0a7b3d21",
                delivery_uuid: "a41d6b0e-4044-4f8e-b3a2-0c9d8e7f6a51",
                created: "2024-05-20T09:12:03Z",
                files: &["figures-q1.xlsx", "summary.pdf"],
                size: 1 << 20,
            },
            Package {
                id: 4045,
                title: "Microscopy run 17",
                note: "Raw stacks from Tuesday, as promised.",
                sender: "bob",
                uuid: "002de384-85ba-4a3c-9239-aae57f657814",
                delivery_uuid: "176cc5df-2df8-4c09-ae93-2b39f3e0ed7b",
                created: "2024-05-26T13:48:37Z",
                files: &[
                    "run17/stack-001.tif",
                    "run17/stack-002.tif",
                    "run17/notes.txt",
                ],
                size: 10 << 20,
            },
            Package {
                id: BIG_PACKAGE_ID,
                title: "Sequencing run 42",
                note: "The full run. Large: use the Aspera client if you can.",
                sender: "cat",
                uuid: "9b3e7c1a-4046-4d2f-8a6b-5e4c3d2b1a09",
                delivery_uuid: "e8f7a6b5-4046-4c3d-9e2f-1a0b9c8d7e6f",
                created: "2024-06-02T07:30:00Z",
                files: &["run42/reads.bam"],
                size: big_package_bytes,
            },
        ];
        let external = vec![
            ExternalDelivery {
                id: EXTERNAL_DELIVERY_ID,
                package_id: 4045,
                passcode: EXTERNAL_DELIVERY_PASSCODE,
                recipient: "collaborator@example.net",
            },
            ExternalDelivery {
                id: BIG_EXTERNAL_DELIVERY.0,
                package_id: BIG_PACKAGE_ID,
                passcode: BIG_EXTERNAL_DELIVERY.1,
                recipient: "collaborator@example.net",
            },
        ];
        Self { packages, external }
    }

    /// All packages, in mailbox order.
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    pub fn package(&self, id: u64) -> Option<&Package> {
        self.packages.iter().find(|p| p.id == id)
    }

    pub fn external_delivery(&self, id: u64) -> Option<&ExternalDelivery> {
        self.external.iter().find(|d| d.id == id)
    }
}

/// The `faspe://` link of a package, or of one file in it (`file`), for `user` (an account name,
/// or an outside recipient's email), in the shape the seed tutorial shows:
///
/// `faspe://HOST/TITLE - UUID.aspera-package/PKG - TITLE?cookie=aspera.faspex20:d:…&port=33001&…&httpport=443&…&v=2`
///
/// Links for outside recipients carry their transfer token (`token`), as Faspex 4 does.
pub fn faspe_link(
    package: &Package,
    transfer_host: &str,
    user: &str,
    file: Option<&str>,
    token: Option<&str>,
) -> String {
    let mut path = format!(
        "/{title} - {uuid}.aspera-package/PKG - {title}",
        title = package.title,
        uuid = package.uuid
    );
    if let Some(file) = file {
        path.push('/');
        path.push_str(file);
    }
    let mut link = format!(
        "faspe://{transfer_host}{path}?cookie={cookie}&port=33001&policy=fair&targetrate=45000\
         &minrate=0&enc=aes128&fallback=yes&httpport=443&auth=no&createpath=no&lockpolicy=yes\
         &lockminrate=yes&bwcap=100000&v=2",
        path = utf8_percent_encode(&path, FASPE_PATH),
        cookie = transfer_cookie(package, user),
    );
    if let Some(token) = token {
        link.push_str("&token=");
        link.push_str(token);
    }
    link
}

/// The transfer cookie: `aspera.faspex20:d:DELIVERY_UUID:b64(user):b64(json):b64(title)`, every
/// part unpadded URL-safe base64 as in the seed (`dG9ibw` is "tobo", `dGVzdA` is "test").
pub fn transfer_cookie(package: &Package, user: &str) -> String {
    let metadata = format!(
        r#"{{"_pkg_uuid":{uuid},"_pkg_name":{name},"_created_utc":{created}}}"#,
        uuid = serde_json::Value::from(package.uuid),
        name = serde_json::Value::from(package.title),
        created = serde_json::Value::from(cookie_time(package.created)),
    );
    format!(
        "aspera.faspex20:d:{delivery}:{user}:{metadata}:{title}",
        delivery = package.delivery_uuid,
        user = URL_SAFE_NO_PAD.encode(user),
        metadata = URL_SAFE_NO_PAD.encode(metadata),
        title = URL_SAFE_NO_PAD.encode(package.title),
    )
}

/// `2014-05-26T13:48:37Z` as the cookie writes it: `2014/05/26 13:48:37 +0000`.
fn cookie_time(rfc3339: &str) -> String {
    let trimmed = rfc3339.trim_end_matches('Z');
    format!("{} +0000", trimmed.replace('-', "/").replace('T', " "))
}

/// A fresh transfer token in the shape Faspex issues (`ATM2_AC…`, about 80 characters).
pub fn transfer_token() -> String {
    format!(
        "ATM2_AC{}",
        URL_SAFE_NO_PAD.encode(crate::base::random_bytes(56))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_cookie_is_reproduced_exactly() {
        let catalog = Catalog::seeded(1);
        // Package 4045 carries the seed's uuids; give it the seed's title and date too.
        let Some(package) = catalog.package(4045) else {
            panic!("package 4045 is seeded")
        };
        let package = Package {
            title: "test",
            created: "2014-05-26T13:48:37Z",
            ..package.clone()
        };
        assert_eq!(
            transfer_cookie(&package, "tobo"),
            "aspera.faspex20:d:176cc5df-2df8-4c09-ae93-2b39f3e0ed7b:dG9ibw:eyJfcGtnX3V1aWQiOiIwMDJkZTM4NC04NWJhLTRhM2MtOTIzOS1hYWU1N2Y2NTc4MTQiLCJfcGtnX25hbWUiOiJ0ZXN0IiwiX2NyZWF0ZWRfdXRjIjoiMjAxNC8wNS8yNiAxMzo0ODozNyArMDAwMCJ9:dGVzdA"
        );
    }

    #[test]
    fn links_encode_spaces_and_carry_the_seed_parameters() {
        let catalog = Catalog::seeded(1);
        let Some(package) = catalog.package(4045) else {
            panic!("package 4045 is seeded")
        };
        let link = faspe_link(package, "faspex.example.org", "ann", None, Some("ATM2_ACx"));
        assert!(link.starts_with(
            "faspe://faspex.example.org/Microscopy%20run%2017%20-%20002de384-85ba-4a3c-9239-aae57f657814.aspera-package/PKG%20-%20Microscopy%20run%2017?cookie=aspera.faspex20:d:"
        ));
        for part in [
            "&port=33001&",
            "&httpport=443&",
            "&fallback=yes&",
            "&v=2&token=ATM2_ACx",
        ] {
            assert!(link.contains(part), "{part} missing from {link}");
        }
        assert!(transfer_token().starts_with("ATM2_AC"));
    }
}
