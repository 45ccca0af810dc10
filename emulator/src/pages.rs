//! What the emulator says: the HTML pages (login, mailboxes, packages, public links), the Atom
//! feeds and entries of the Faspex 4 API, its JSON documents, and the small static assets. Pure
//! functions from data to text; every value that did not come from this file is escaped.

use serde_json::{json, Value};

use crate::base::escape;
use crate::catalog::{faspe_link, Package};

/// The body Rails sends with a redirect.
pub fn redirect_body(location: &str) -> String {
    format!(
        "<html><body>You are being <a href=\"{}\">redirected</a>.</body></html>",
        escape(location)
    )
}

/// The page frame: head with the static assets, the navigation for a signed-in `user`, `content`.
fn layout(title: &str, user: Option<&str>, content: &str) -> String {
    let nav = match user {
        Some(user) => format!(
            "<ul id=\"nav\"><li><a href=\"/aspera/faspex/inbox\">Received</a></li>\
             <li><a href=\"/aspera/faspex/sent\">Sent</a></li>\
             <li><a href=\"/aspera/faspex/send\">New Package</a></li>\
             <li class=\"user\">{}</li>\
             <li><a href=\"/aspera/faspex/logout\">Logout</a></li></ul>",
            escape(user)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title} - Aspera Faspex</title>\n\
         <link href=\"/aspera/faspex/stylesheets/application.css\" media=\"screen\" rel=\"stylesheet\" type=\"text/css\">\n\
         <script src=\"/aspera/faspex/javascripts/application.js\" type=\"text/javascript\"></script>\n\
         </head>\n<body>\n<div id=\"header\"><img src=\"/aspera/faspex/images/aspera_logo.svg\" alt=\"Aspera\"> \
         <span class=\"product\">Faspex</span>{nav}</div>\n<div id=\"content\">\n{content}\n</div>\n\
         <div id=\"footer\">IBM Aspera Faspex 4.4.1</div>\n</body>\n</html>\n",
        title = escape(title),
    )
}

/// The login page, with `flash` (e.g. "Your login was not successful") above the form.
pub fn login_page(flash: Option<&str>, authenticity_token: &str) -> String {
    let flash = flash
        .map(|text| {
            format!(
                "<div id=\"flash\" class=\"flash error\">{}</div>\n",
                escape(text)
            )
        })
        .unwrap_or_default();
    let content = format!(
        "<h1>Log in to Aspera Faspex</h1>\n{flash}\
         <form accept-charset=\"UTF-8\" action=\"/aspera/faspex/login\" id=\"login_form\" method=\"post\">\n\
         <input name=\"utf8\" type=\"hidden\" value=\"&#x2713;\">\n\
         <input name=\"authenticity_token\" type=\"hidden\" value=\"{token}\">\n\
         <p><label for=\"user_name\">Username</label>\n\
         <input autofocus=\"autofocus\" id=\"user_name\" name=\"user[name]\" size=\"30\" type=\"text\"></p>\n\
         <p><label for=\"user_password\">Password</label>\n\
         <input autocomplete=\"off\" id=\"user_password\" name=\"user[password]\" size=\"30\" type=\"password\"></p>\n\
         <p><input class=\"button\" name=\"commit\" type=\"submit\" value=\"Login\"></p>\n\
         </form>\n<p class=\"hint\"><a href=\"/aspera/faspex/password_resets/new\">Forgot your password?</a></p>",
        token = escape(authenticity_token),
    );
    layout("Login", None, &content)
}

/// A mailbox of the Faspex 4 API and web UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mailbox {
    Inbox,
    Sent,
    Archive,
}

impl Mailbox {
    /// The feed's name in its path: `inbox.atom`, `sent.atom`, `archive.atom`.
    pub fn name(self) -> &'static str {
        match self {
            Mailbox::Inbox => "inbox",
            Mailbox::Sent => "sent",
            Mailbox::Archive => "archive",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Mailbox::Inbox => "Received Packages",
            Mailbox::Sent => "Sent Packages",
            Mailbox::Archive => "Archived Packages",
        }
    }

    /// The page one package of this mailbox lives at: `received/{id}` or `sent/{id}`.
    fn item_path(self) -> &'static str {
        match self {
            Mailbox::Inbox | Mailbox::Archive => "received",
            Mailbox::Sent => "sent",
        }
    }
}

/// The HTML list of a mailbox.
pub fn mailbox_page(user: &str, mailbox: Mailbox, packages: &[Package]) -> String {
    let rows: String = packages
        .iter()
        .rev()
        .map(|p| {
            format!(
                "<tr id=\"package_{id}\"><td><a href=\"/aspera/faspex/{item}/{id}\">{title}</a></td>\
                 <td>{sender}</td><td>{files}</td><td>{size}</td><td>{created}</td></tr>\n",
                id = p.id,
                item = mailbox.item_path(),
                title = escape(p.title),
                sender = escape(p.sender),
                files = p.files.len(),
                size = human_size(p.size),
                created = escape(p.created),
            )
        })
        .collect();
    let content = format!(
        "<h1>{title}</h1>\n<table class=\"packages\">\n\
         <tr><th>Title</th><th>From</th><th>Files</th><th>Size</th><th>Sent</th></tr>\n{rows}</table>",
        title = mailbox.title(),
    );
    layout(mailbox.title(), Some(user), &content)
}

/// The HTML page of one package, for a signed-in `user`; `download_href` fetches it over the HTTP Gateway.
pub fn package_page(user: &str, package: &Package, download_href: &str) -> String {
    let content = package_details(package, download_href);
    layout(package.title, Some(user), &content)
}

/// The HTML page an outside recipient sees at an external delivery link.
pub fn external_delivery_page(package: &Package, download_href: &str) -> String {
    let content = format!(
        "<p class=\"notice\">This package was sent to you with Aspera Faspex.</p>\n{}",
        package_details(package, download_href)
    );
    layout(package.title, None, &content)
}

fn package_details(package: &Package, download_href: &str) -> String {
    let files: String = package
        .files
        .iter()
        .map(|f| format!("<li>{}</li>", escape(f)))
        .collect();
    format!(
        "<h1>{title}</h1>\n<p class=\"from\">From: {sender}</p>\n<p class=\"note\">{note}</p>\n\
         <ul class=\"files\">{files}</ul>\n<p class=\"size\">{size}</p>\n\
         <p><a class=\"button\" id=\"download_connect\" href=\"#\" data-package=\"{id}\">Download with Aspera Connect</a>\n\
         <a class=\"button\" id=\"download_http\" href=\"{href}\">Download with HTTP</a></p>",
        title = escape(package.title),
        sender = escape(package.sender),
        note = escape(package.note),
        size = human_size(package.size),
        id = package.id,
        href = escape(download_href),
    )
}

/// Which public submission form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submission {
    /// An invitation to submit (`/external/submissions`).
    Invitation,
    /// A public dropbox link (`/external/dropbox_submissions`).
    Dropbox,
}

impl Submission {
    fn action(self) -> &'static str {
        match self {
            Submission::Invitation => "/aspera/faspex/external/submissions",
            Submission::Dropbox => "/aspera/faspex/external/dropbox_submissions",
        }
    }

    fn recipient(self) -> &'static str {
        match self {
            Submission::Invitation => "ann",
            Submission::Dropbox => "Sequencing core (dropbox)",
        }
    }
}

/// The public "Send to" form of an invitation or a dropbox.
pub fn submission_form(kind: Submission, passcode: &str) -> String {
    let content = format!(
        "<h1>Send to {recipient}</h1>\n\
         <form action=\"{action}\" enctype=\"multipart/form-data\" id=\"new_delivery\" method=\"post\">\n\
         <input name=\"passcode\" type=\"hidden\" value=\"{passcode}\">\n\
         <p><label for=\"delivery_sender_email\">Your email</label>\n\
         <input id=\"delivery_sender_email\" name=\"delivery[sender_email]\" type=\"email\"></p>\n\
         <p><label for=\"delivery_title\">Title</label>\n\
         <input id=\"delivery_title\" name=\"delivery[title]\" type=\"text\"></p>\n\
         <p><label for=\"delivery_note\">Note</label>\n\
         <textarea id=\"delivery_note\" name=\"delivery[note]\"></textarea></p>\n\
         <p><label for=\"delivery_file\">Contents</label>\n\
         <input id=\"delivery_file\" name=\"delivery[file]\" type=\"file\" multiple></p>\n\
         <p><input class=\"button\" name=\"commit\" type=\"submit\" value=\"Send Package\"></p>\n</form>",
        recipient = escape(kind.recipient()),
        action = kind.action(),
        passcode = escape(passcode),
    );
    layout("Send Package", None, &content)
}

/// The confirmation after a public submission, saying how many bytes arrived.
pub fn submission_received(kind: Submission, bytes: u64) -> String {
    let content = format!(
        "<h1>Package sent</h1>\n<p class=\"notice\">Your package to {recipient} was received \
         (<span id=\"bytes_received\">{bytes}</span> bytes). The recipient has been notified.</p>",
        recipient = escape(kind.recipient()),
    );
    layout("Package sent", None, &content)
}

/// A page with a heading and one message (404, 403 and the like).
pub fn message_page(title: &str, message: &str) -> String {
    let content = format!("<h1>{}</h1>\n<p>{}</p>", escape(title), escape(message));
    layout(title, None, &content)
}

/// `1048576` as `1 MB`, the way the mailbox lists sizes.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 && value.is_multiple_of(1024) && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

/// Where an Atom entry is read from, and for whom.
pub struct EntryContext<'a> {
    /// Scheme and authority for absolute links, as `http::base_url` computes it.
    pub base: &'a str,
    /// The transfer server named in `faspe://` links.
    pub transfer_host: &'a str,
    /// The recipient: account name, or outside email.
    pub user: &'a str,
    /// A transfer token to put in the links (outside recipients only).
    pub token: Option<&'a str>,
}

/// One package as the Faspex 4 API describes it: an Atom `<entry>` whose `<link rel="package">` is
/// the `faspe://` link of the whole package, followed by one `rel="content"` link per file.
/// `standalone` adds the XML declaration and the Atom namespace (a `GET received/{id}` answer).
pub fn atom_entry(
    package: &Package,
    mailbox: Mailbox,
    cx: &EntryContext<'_>,
    standalone: bool,
) -> String {
    let mut links = format!(
        "  <link rel=\"package\" href=\"{}\"/>\n",
        escape(&faspe_link(
            package,
            cx.transfer_host,
            cx.user,
            None,
            cx.token
        ))
    );
    for file in package.files {
        links.push_str(&format!(
            "  <link rel=\"content\" title=\"{}\" href=\"{}\"/>\n",
            escape(file),
            escape(&faspe_link(
                package,
                cx.transfer_host,
                cx.user,
                Some(file),
                cx.token
            ))
        ));
    }
    let (head, ns) = if standalone {
        (
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            " xmlns=\"http://www.w3.org/2005/Atom\"",
        )
    } else {
        ("", "")
    };
    format!(
        "{head}<entry{ns}>\n  <id>urn:uuid:{uuid}</id>\n  <title>{title}</title>\n\
         <published>{created}</published>\n  <updated>{created}</updated>\n\
         <author><name>{sender}</name><email>{sender}@example.org</email></author>\n\
         <summary>{note}</summary>\n  <delivery_id>{id}</delivery_id>\n\
         <to><name>{user}</name><recipient_delivery_id>{id}</recipient_delivery_id></to>\n\
         <link rel=\"alternate\" type=\"text/html\" href=\"{base}/aspera/faspex/{item}/{id}\"/>\n\
         {links}</entry>\n",
        uuid = package.uuid,
        title = escape(package.title),
        created = package.created,
        sender = escape(package.sender),
        note = escape(package.note),
        id = package.id,
        user = escape(cx.user),
        base = escape(cx.base),
        item = mailbox.item_path(),
    )
}

/// Which slice of a mailbox a feed shows.
pub struct Page {
    /// Zero-based index of the first entry.
    pub start: usize,
    pub count: usize,
    /// The query that asked for the next slice, when there is one.
    pub next_query: Option<String>,
    /// The query of this slice.
    pub self_query: String,
}

/// A mailbox as an Atom feed (newest first), with OpenSearch paging and a `rel="next"` link.
pub fn atom_feed(
    mailbox: Mailbox,
    packages: &[&Package],
    total: usize,
    page: &Page,
    cx: &EntryContext<'_>,
) -> String {
    let feed_url = format!("{}/aspera/faspex/{}.atom", cx.base, mailbox.name());
    let updated = packages
        .iter()
        .map(|p| p.created)
        .max()
        .unwrap_or("2024-01-01T00:00:00Z");
    let next = page
        .next_query
        .as_ref()
        .map(|q| {
            format!(
                "  <link rel=\"next\" href=\"{}\"/>\n",
                escape(&format!("{feed_url}?{q}"))
            )
        })
        .unwrap_or_default();
    let entries: String = packages
        .iter()
        .map(|p| atom_entry(p, mailbox, cx, false))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:opensearch=\"http://a9.com/-/spec/opensearch/1.1/\">\n\
         <id>{feed}</id>\n  <title>{title} for {user}</title>\n  <updated>{updated}</updated>\n\
         <link rel=\"self\" href=\"{self_href}\"/>\n{next}\
         <opensearch:totalResults>{total}</opensearch:totalResults>\n\
         <opensearch:startIndex>{start}</opensearch:startIndex>\n\
         <opensearch:itemsPerPage>{count}</opensearch:itemsPerPage>\n{entries}</feed>\n",
        feed = escape(&feed_url),
        title = mailbox.title(),
        user = escape(cx.user),
        self_href = escape(&format!("{feed_url}?{}", page.self_query)),
        start = page.start,
        count = page.count,
    )
}

/// An XML error document, for API clients asking for XML.
pub fn xml_error(message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error><message>{}</message></error>\n",
        escape(message)
    )
}

/// `GET /me`: the signed-in account.
pub fn me_json(user: &str) -> Value {
    json!({
        "name": user,
        "email": format!("{user}@example.org"),
        "first_name": capitalised(user),
        "last_name": "Example",
        "type": "user",
        "can_send": true,
        "can_receive": true,
        "links": {
            "inbox": "/aspera/faspex/inbox.atom",
            "sent": "/aspera/faspex/sent.atom",
            "archive": "/aspera/faspex/archive.atom"
        }
    })
}

/// `GET /dropboxes`: the dropboxes the account belongs to (fields as aspera-cli lists them).
pub fn dropboxes_json() -> Value {
    json!({
        "items": [
            {"id": 1, "name": "Sequencing core", "description": "Runs for the sequencing core", "can_read": true, "can_write": true},
            {"id": 2, "name": "Imaging", "description": "Microscopy submissions", "can_read": false, "can_write": true}
        ]
    })
}

/// `GET /address-book?format=json`: every account, in the OpenSearch-style envelope aspera-cli reads.
pub fn address_book_json(users: &[String]) -> Value {
    let entries: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            json!({
                "id": i + 1,
                "userName": user,
                "displayName": format!("{} Example", capitalised(user)),
                "emails": [{"value": format!("{user}@example.org"), "primary": "true"}]
            })
        })
        .collect();
    json!({
        "itemsPerPage": entries.len(),
        "totalResults": entries.len(),
        "startIndex": 0,
        "entry": entries
    })
}

/// `GET /api/…/me` on the v4 (OAuth) API.
pub fn api_user_json(id: usize, user: &str) -> Value {
    json!({
        "id": id,
        "name": user,
        "first_name": capitalised(user),
        "last_name": "Example",
        "email": format!("{user}@example.org"),
        "created_at": "2024-01-15T08:00:00Z"
    })
}

/// The Faspex error document: `POST /send` answers problems with `200` and this body.
pub fn send_error(user_message: &str, internal_message: &str) -> Value {
    json!({"error": {"user_message": user_message, "internal_message": internal_message}})
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A static asset: its `Content-Type` and body.
pub fn asset(folder: &str, name: &str) -> Option<(&'static str, &'static str)> {
    match (folder, name) {
        ("stylesheets", "application.css") => Some(("text/css; charset=utf-8", APPLICATION_CSS)),
        ("javascripts", "application.js") => {
            Some(("application/javascript; charset=utf-8", APPLICATION_JS))
        }
        ("images", "aspera_logo.svg") => Some(("image/svg+xml", LOGO_SVG)),
        _ => None,
    }
}

const APPLICATION_CSS: &str =
    "body { font-family: Helvetica, Arial, sans-serif; margin: 0; color: #222; }
#header { background: #1d3f72; color: #fff; padding: 8px 16px; }
#header img { height: 24px; vertical-align: middle; }
#nav { display: inline; list-style: none; margin-left: 24px; }
#nav li { display: inline; margin-right: 12px; }
#nav a { color: #fff; }
#content { padding: 16px; }
.flash.error { background: #fbe3e4; border: 1px solid #fbc2c4; color: #8a1f11; padding: 8px; }
.notice { background: #e6efc2; border: 1px solid #c6d880; padding: 8px; }
table.packages td, table.packages th { padding: 4px 12px; text-align: left; }
.button { background: #1d3f72; color: #fff; padding: 4px 12px; border-radius: 3px; }
#footer { color: #888; font-size: small; padding: 16px; }
";

const APPLICATION_JS: &str = "/* Aspera Faspex (emulated): focus the first field of a form. */
document.addEventListener('DOMContentLoaded', function () {
  var field = document.querySelector('input[autofocus]');
  if (field) { field.focus(); }
});
";

const LOGO_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"96\" height=\"24\" viewBox=\"0 0 96 24\">\
<rect width=\"96\" height=\"24\" rx=\"4\" fill=\"#ffffff\"/>\
<text x=\"48\" y=\"17\" font-family=\"Helvetica\" font-size=\"14\" text-anchor=\"middle\" fill=\"#1d3f72\">aspera</text></svg>
";

/// A form's errors as Rails' `error_messages` lists them (nothing when there are none).
fn form_errors(errors: &[&str]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let items: String = errors
        .iter()
        .map(|e| format!("<li>{}</li>", escape(e)))
        .collect();
    format!("<div class=\"error_messages\" id=\"error_explanation\"><ul>{items}</ul></div>\n")
}

/// `GET /account`: the signed-in user's account, with a link to change the local password.
pub fn account_page(user: &str, flash: Option<&str>) -> String {
    let flash = flash
        .map(|text| {
            format!(
                "<div id=\"flash\" class=\"flash notice\">{}</div>\n",
                escape(text)
            )
        })
        .unwrap_or_default();
    let content = format!(
        "<h1>Account</h1>\n{flash}<p>Signed in as <span id=\"account_login\">{user}</span>.</p>\n\
         <p><a href=\"/aspera/faspex/account/password\">Change password</a></p>",
        user = escape(user),
    );
    layout("Account", Some(user), &content)
}

/// `GET /account/password`: the form that changes a local account's password (a `PUT` through
/// Rails' `_method`), with `errors` from a refused attempt.
pub fn password_form(user: &str, errors: &[&str]) -> String {
    let content = format!(
        "<h1>Change password</h1>\n{errors}\
         <form action=\"/aspera/faspex/account/password\" id=\"edit_password\" method=\"post\">\n\
         <input name=\"_method\" type=\"hidden\" value=\"put\">\n\
         <p><label for=\"user_current_password\">Current password</label>\n\
         <input id=\"user_current_password\" name=\"user[current_password]\" type=\"password\"></p>\n\
         <p><label for=\"user_password\">New password</label>\n\
         <input id=\"user_password\" name=\"user[password]\" type=\"password\"></p>\n\
         <p><label for=\"user_password_confirmation\">Confirm new password</label>\n\
         <input id=\"user_password_confirmation\" name=\"user[password_confirmation]\" type=\"password\"></p>\n\
         <p><input class=\"button\" name=\"commit\" type=\"submit\" value=\"Change password\"></p>\n</form>",
        errors = form_errors(errors),
    );
    layout("Change password", Some(user), &content)
}

/// `GET /admin/users`: every account, and the form that creates a local collaborator account.
pub fn admin_users_page(user: &str, accounts: &[String], errors: &[&str]) -> String {
    let rows: String = accounts
        .iter()
        .map(|a| format!("<li class=\"account\">{}</li>", escape(a)))
        .collect();
    let content = format!(
        "<h1>Users</h1>\n<ul id=\"users\">{rows}</ul>\n<h2>New local user</h2>\n{errors}\
         <form action=\"/aspera/faspex/admin/users\" id=\"new_user\" method=\"post\">\n\
         <p><label for=\"user_login\">Login</label>\n\
         <input id=\"user_login\" name=\"user[login]\" type=\"text\"></p>\n\
         <p><label for=\"user_email\">Email</label>\n\
         <input id=\"user_email\" name=\"user[email]\" type=\"email\"></p>\n\
         <p><label for=\"user_password\">Password</label>\n\
         <input id=\"user_password\" name=\"user[password]\" type=\"password\"></p>\n\
         <p><label for=\"user_password_confirmation\">Confirm password</label>\n\
         <input id=\"user_password_confirmation\" name=\"user[password_confirmation]\" type=\"password\"></p>\n\
         <p><input class=\"button\" name=\"commit\" type=\"submit\" value=\"Create user\"></p>\n</form>",
        errors = form_errors(errors),
    );
    layout("Users", Some(user), &content)
}
