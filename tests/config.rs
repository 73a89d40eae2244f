//! Configuration: defaults, then data/config.toml (or --config), then SIMPLESTREAM_* variables,
//! then flags; `config` shows each value's origin; anything unknown or ill-typed is refused
//! with one line that names it.

use crate::support;
use crate::support::TestDir;

fn config_output(t: &TestDir, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = t.command(&[&["config"], args].concat());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn line_for<'a>(text: &'a str, key_line_start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(key_line_start))
        .unwrap_or_else(|| panic!("no {key_line_start:?} in:\n{text}"))
}

#[test]
fn each_layer_overrides_the_one_before_and_says_so() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(
        t.data().join("config.toml"),
        "[http]\nlisten = \"127.0.0.1:1001\"\nremote_name = \"lab\"\nmax_connections = 7\n[ssh]\nlisten = \"127.0.0.1:1002\"\n",
    )
    .unwrap();
    let output = config_output(
        &t,
        &[
            "--http-max-connections",
            "9",
            "--tls-san",
            "a.example",
            "--tls-san",
            "b.example",
        ],
        &[
            ("SIMPLESTREAM_HTTP_REMOTE_NAME", "fromenv"),
            ("SIMPLESTREAM_HTTP_MAX_CONNECTIONS", "8"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!("file: {}", t.data().join("config.toml").display())),
        "{text}"
    );
    assert!(line_for(&text, "listen = \"127.0.0.1:1001\"").ends_with("# config file"));
    assert!(
        line_for(&text, "remote_name = \"fromenv\"")
            .ends_with("# environment SIMPLESTREAM_HTTP_REMOTE_NAME")
    );
    assert!(line_for(&text, "max_connections = 9").ends_with("# flag --http-max-connections"));
    assert!(line_for(&text, "san = [\"a.example\", \"b.example\"]").ends_with("# flag --tls-san"));
    assert!(line_for(&text, "grace_period_secs = 3600").ends_with("# default"));
    assert!(line_for(&text, "# cert is unset").ends_with("# default"));
    // The printed configuration is itself a valid config file.
    let reparsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(reparsed["http"]["max_connections"].as_integer(), Some(9));
}

#[test]
fn short_flag_aliases_and_the_flag_after_the_command() {
    let t = TestDir::new();
    let output = config_output(
        &t,
        &["--https-listen", "127.0.0.1:9999", "--grace-period", "60"],
        &[],
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        line_for(&text, "listen = \"127.0.0.1:9999\"").contains("flag --http-listen"),
        "{text}"
    );
    assert!(text.contains("grace_period_secs = 60"), "{text}");
}

#[test]
fn mistakes_are_named_in_one_line() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.data()).unwrap();
    /// (config file, flags, environment, the message expected)
    type Case<'a> = (
        Option<&'a str>,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            Some("[http]\nlistne = \"x\"\n"),
            vec![],
            vec![],
            "config.toml line 2 (http.listne): unknown field `listne`",
        ),
        (
            Some("[htp]\n"),
            vec![],
            vec![],
            "config.toml line 1 (htp): unknown field `htp`",
        ),
        (
            Some("[http]\nmax_connections = \"many\"\n"),
            vec![],
            vec![],
            "config.toml line 2 (http.max_connections): invalid type: string \"many\"",
        ),
        (
            None,
            vec![],
            vec![("SIMPLESTREAM_HTTP_LISTNE", "x")],
            "SIMPLESTREAM_HTTP_LISTNE is not a setting; `simplestream-server config` lists them",
        ),
        (
            None,
            vec![],
            vec![("SIMPLESTREAM_SSH_LISTEN", "nowhere")],
            "SIMPLESTREAM_SSH_LISTEN (ssh.listen): invalid socket address syntax",
        ),
        (
            None,
            vec!["--http-plain-http-images", "maybe"],
            vec![],
            "--http-plain-http-images (http.plain_http_images): \"maybe\" is not true or false",
        ),
        (
            None,
            vec!["--log-format", "xml"],
            vec![],
            "--log-format (log.format): unknown variant `xml`",
        ),
    ];
    for (file, flags, env, expected) in cases {
        match file {
            Some(text) => std::fs::write(t.data().join("config.toml"), text).unwrap(),
            None => {
                let _ = std::fs::remove_file(t.data().join("config.toml"));
            }
        }
        let output = config_output(&t, &flags, &env);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{expected}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?}, got {stderr:?}"
        );
    }
    // A named config file must exist; the default one may be absent.
    let output = t
        .command(&["config", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read /nonexistent/config.toml: No such file or directory")
    );
}

#[test]
fn the_catalog_uses_the_configured_grace_period() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(
        t.data().join("config.toml"),
        "[catalog]\ngrace_period_secs = 0\n",
    )
    .unwrap();
    let meta = t.file("m.tar.xz");
    support::metadata_tarball(&meta, &support::Meta::default());
    let root = t.file("r.squashfs");
    support::squashfs(&root, "grace");
    t.ok(&["import", meta.to_str().unwrap(), root.to_str().unwrap()]);
    let fingerprint = support::sha256_of(&[&meta, &root]);
    let out = t.ok(&["remove", &fingerprint]);
    assert!(out.contains("its files are deleted now"), "{out}");
    assert!(!t.www().join("images/testos").exists());
}

/// The metadata bomb limit (issue 10, item 8) is a setting: lowered, it refuses a tarball the
/// default lets through, naming the setting.
#[test]
fn the_catalog_uses_the_configured_unpacked_metadata_limit() {
    let t = TestDir::new();
    let yaml = support::Meta::default().yaml();
    let meta = t.file("m.tar.xz");
    let template = vec![b'x'; 256 << 10];
    support::tarball(
        &meta,
        &[
            ("metadata.yaml", yaml.as_bytes()),
            ("templates/big.tpl", &template),
        ],
        "xz",
    );
    let root = t.file("r.squashfs");
    support::squashfs(&root, "limit");
    std::fs::create_dir_all(t.data()).unwrap();
    for (setting, expected) in [
        (
            "max_metadata_unpacked_bytes = 65536",
            "m.tar.xz unpacks to more than 65536 bytes besides its root filesystem (metadata, templates); the limit is catalog.max_metadata_unpacked_bytes",
        ),
        (
            "max_metadata_entries = 1",
            "m.tar.xz has more than 1 entries besides its root filesystem; the limit is catalog.max_metadata_entries",
        ),
    ] {
        std::fs::write(
            t.data().join("config.toml"),
            format!("[catalog]\n{setting}\n"),
        )
        .unwrap();
        let err = t.fails(
            &["import", meta.to_str().unwrap(), root.to_str().unwrap()],
            1,
        );
        assert_eq!(
            err,
            format!("simplestream-server: {}/{expected}", t.path().display())
        );
    }
    std::fs::remove_file(t.data().join("config.toml")).unwrap();
    t.ok(&["import", meta.to_str().unwrap(), root.to_str().unwrap()]);
}

/// `[[mirror]]` tables: `config` shows each with every field's origin; a bad table stops every
/// command with one line per problem, each naming its table; the good file before it works.
#[test]
fn mirror_tables_are_shown_and_each_bad_entry_is_one_line() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(
        t.data().join("config.toml"),
        "[[mirror]]\nname = \"lxc\"\nurl = \"https://images.linuxcontainers.org\"\n\
         filters = [\"os=debian\", \"type=container\"]\nkeep = 2\ninterval = \"12h\"\n",
    )
    .unwrap();
    let text = t.ok(&["config"]);
    assert!(text.contains("\n[[mirror]]\n"), "{text}");
    assert!(line_for(&text, "name = \"lxc\"").ends_with("# config file"));
    assert!(line_for(&text, "interval = \"12h\"").ends_with("# config file"));
    assert!(line_for(&text, "enabled = true").ends_with("# default"));
    assert!(line_for(&text, "# ca_cert is unset").ends_with("# default"));
    let reparsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(reparsed["mirror"][0]["keep"].as_integer(), Some(2));

    std::fs::write(
        t.data().join("config.toml"),
        "[[mirror]]\nname = \"lxc\"\nurl = \"https://images.linuxcontainers.org\"\n\
         filters = [\"distro=debian\"]\ninterval = \"0h\"\n\
         [[mirror]]\nname = \"lxc\"\nurl = \"ftp://cloud-images.ubuntu.com/releases\"\n",
    )
    .unwrap();
    for command in [&["config"][..], &["list"][..], &["serve"][..]] {
        let output = t.run(command);
        assert_eq!(output.status.code(), Some(1), "{command:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 4, "{stderr}");
        for (line, expected) in lines.iter().zip([
            "[[mirror]] \"lxc\": filter \"distro=debian\" names an unknown field \"distro\"",
            "[[mirror]] \"lxc\": interval is zero",
            "[[mirror]] \"lxc\": the name is used by an earlier [[mirror]] table",
            "[[mirror]] \"lxc\": url \"ftp://cloud-images.ubuntu.com/releases\" must start with https://",
        ]) {
            assert!(line.starts_with("simplestream-server: "), "{line}");
            assert!(line.contains("config.toml: "), "{line}");
            assert!(line.contains(expected), "expected {expected:?} in {line:?}");
        }
    }
}
