//! The hostile input corpus: each case is imported with `--move` and must fail with exactly
//! the one line a user sees, exit status 1, nothing published (the whole www/ tree compared
//! byte for byte) and nothing moved (every source file still there, unchanged).

use std::path::PathBuf;

use crate::support;
use crate::support::{Meta, TestDir};

const GOOD_CREATED: i64 = 1_764_244_800;

struct Corpus {
    t: TestDir,
}

impl Corpus {
    fn new() -> Corpus {
        let t = TestDir::new();
        // Something published already, so "unchanged" means something.
        let meta = t.file("published.tar.xz");
        support::metadata_tarball(&meta, &Meta::default());
        let root = t.file("published.squashfs");
        support::squashfs(&root, "published");
        t.ok(&[
            "import",
            meta.to_str().unwrap(),
            root.to_str().unwrap(),
            "--alias",
            "taken",
        ]);
        Corpus { t }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.file(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.path(name), bytes).unwrap();
        name.to_string()
    }

    fn tar(&self, name: &str, entries: &[(&str, &[u8])], compression: &str) -> String {
        support::tarball(&self.path(name), entries, compression);
        name.to_string()
    }

    fn meta(&self, name: &str, yaml: &str) -> String {
        self.tar(name, &[("metadata.yaml", yaml.as_bytes())], "xz")
    }

    fn squashfs(&self, name: &str) -> String {
        support::squashfs(&self.path(name), name);
        name.to_string()
    }

    /// Runs `import --move <args>` in the test directory and checks the refusal.
    fn refuses(&self, args: &[&str], expected: &str) {
        let before = self.t.snapshot_www();
        let sources: Vec<(PathBuf, Option<Vec<u8>>)> = args
            .iter()
            .filter(|a| !a.starts_with("--"))
            .map(|a| (self.path(a), std::fs::read(self.path(a)).ok()))
            .collect();
        let output = self
            .t
            .command(&[&["import", "--move"], args].concat())
            .current_dir(self.t.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!("simplestream-server: {expected}\n"),
            "{args:?}"
        );
        assert_eq!(
            self.t.snapshot_www(),
            before,
            "{args:?} changed the published tree"
        );
        for (path, content) in sources {
            assert_eq!(
                std::fs::read(&path).ok(),
                content,
                "{args:?} moved or changed {}",
                path.display()
            );
        }
        assert!(
            std::fs::read_dir(self.t.data().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "{args:?} left a staged file"
        );
    }
}

fn yaml(meta: &Meta) -> String {
    meta.yaml()
}

fn default_yaml() -> String {
    yaml(&Meta {
        release: "corpus",
        ..Meta::default()
    })
}

/// A raw tar header for names and links that tar::Builder refuses to write.
fn raw_entry(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    {
        let ustar = header.as_ustar_mut().unwrap();
        ustar.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            ustar.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(kind);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn raw_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn metadata_tarballs() {
    let c = Corpus::new();
    let root = c.squashfs("root.squashfs");
    let good = default_yaml();
    let xz = std::fs::read(c.path(&c.meta("full.tar.xz", &good))).unwrap();
    let gz = support::compress(
        &raw_tar(&[raw_entry(
            "metadata.yaml",
            tar::EntryType::Regular,
            None,
            good.as_bytes(),
        )]),
        "gz",
    );

    c.refuses(
        &[
            &c.write("notatar.tar.xz", b"this is not an archive\n"),
            &root,
        ],
        "notatar.tar.xz is not a tarball (it is a text file)",
    );
    c.refuses(
        &[&c.write("empty.tar.xz", b""), &root],
        "empty.tar.xz is not a tarball (it is an empty file)",
    );
    c.refuses(
        &[&c.write("elf.tar.xz", b"\x7fELF\x02\x01\x01"), &root],
        "elf.tar.xz is not a tarball (it is an ELF binary)",
    );
    c.refuses(
        &[&c.write("trunc.tar.xz", &xz[..xz.len() - 40]), &root],
        "trunc.tar.xz is truncated or corrupt (premature eof)",
    );
    c.refuses(
        &[&c.write("trunc.tar.gz", &gz[..gz.len() / 2]), &root],
        "trunc.tar.gz is truncated or corrupt (incomplete deflate stream)",
    );
    c.refuses(
        &[
            &c.tar("nometa.tar.xz", &[("templates/hostname.tpl", b"x")], "xz"),
            &root,
        ],
        "nometa.tar.xz has no metadata.yaml; pass the metadata tarball first",
    );
    c.refuses(
        &[&c.meta("emptyyaml.tar.xz", ""), &root],
        "metadata.yaml in emptyyaml.tar.xz is empty",
    );
    c.refuses(
        &[&c.meta("notyaml.tar.xz", "architecture: [x86_64\n"), &root],
        "metadata.yaml in notyaml.tar.xz is not valid YAML (line 1 column 15: unclosed bracket '[')",
    );
    c.refuses(
        &[&c.meta("list.tar.xz", "- a\n- b\n"), &root],
        "metadata.yaml in list.tar.xz must be a YAML mapping, found list",
    );
    c.refuses(
        &[
            &c.meta(
                "types.tar.xz",
                &good.replace("architecture: x86_64", "architecture: {a: 1}"),
            ),
            &root,
        ],
        "metadata.yaml in types.tar.xz has `architecture` of type mapping, expected a string",
    );
    c.refuses(
        &[&c.meta("datetype.tar.xz", &good.replace(&GOOD_CREATED.to_string(), "true")), &root],
        "metadata.yaml in datetype.tar.xz has `creation_date` of type boolean, expected unix seconds",
    );
    c.refuses(
        &[&c.meta("arch.tar.xz", &good.replace("x86_64", "loong64")), &root],
        "metadata.yaml in arch.tar.xz has unknown architecture \"loong64\"; LXD knows x86_64/amd64, aarch64/arm64, armv7l/armhf, i686/i386, ppc64le/ppc64el, s390x and riscv64",
    );
    c.refuses(
        &[
            &c.meta(
                "noprops.tar.xz",
                &format!("architecture: x86_64\ncreation_date: {GOOD_CREATED}\n"),
            ),
            &root,
        ],
        "metadata.yaml in noprops.tar.xz has no `properties` (os, release, variant, description)",
    );
    c.refuses(
        &[
            &c.meta(
                "norelease.tar.xz",
                &good.replace("  release: \"corpus\"\n", ""),
            ),
            &root,
        ],
        "metadata.yaml in norelease.tar.xz has no `properties.release`",
    );
    c.refuses(
        &[&c.meta("badname.tar.xz", &good.replace("os: testos", "os: \"test os\"")), &root],
        "metadata.yaml in badname.tar.xz has `properties.os` \"test os\": it may hold only letters, digits, '.', '_', '+' and '-'",
    );
    c.refuses(
        &[&c.meta("zero.tar.xz", &good.replace(&GOOD_CREATED.to_string(), "0")), &root],
        "metadata.yaml in zero.tar.xz has creation_date 0, before the year 2000; set it to the build time in unix seconds",
    );
    c.refuses(
        &[&c.meta("future.tar.xz", &good.replace(&GOOD_CREATED.to_string(), "4102444800")), &root],
        "metadata.yaml in future.tar.xz has creation_date 4102444800, more than a day in the future; check the build host's clock",
    );
    let huge = format!("{good}padding: \"{}\"\n", "x".repeat(1 << 20));
    c.refuses(
        &[&c.meta("huge.tar.xz", &huge), &root],
        &format!(
            "huge.tar.xz has a metadata.yaml of {} bytes; the limit is 1048576 bytes",
            huge.len()
        ),
    );
    let two = raw_tar(&[
        raw_entry(
            "metadata.yaml",
            tar::EntryType::Regular,
            None,
            good.as_bytes(),
        ),
        raw_entry(
            "./metadata.yaml",
            tar::EntryType::Regular,
            None,
            good.as_bytes(),
        ),
    ]);
    c.refuses(
        &[&c.write("two.tar", &two), &root],
        "two.tar has two metadata.yaml entries",
    );
}

#[test]
fn hostile_tar_entries() {
    let c = Corpus::new();
    let root = c.squashfs("root.squashfs");
    let good = default_yaml();
    let meta_entry = raw_entry(
        "metadata.yaml",
        tar::EntryType::Regular,
        None,
        good.as_bytes(),
    );
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "dotdot.tar",
            raw_entry(
                "templates/../../etc/cron.d/x",
                tar::EntryType::Regular,
                None,
                b"x",
            ),
            "has an entry \"templates/../../etc/cron.d/x\" that climbs out with '..'",
        ),
        (
            "absolute.tar",
            raw_entry("/etc/passwd", tar::EntryType::Regular, None, b"x"),
            "has an entry with an absolute path \"/etc/passwd\"",
        ),
        (
            "symlink.tar",
            raw_entry(
                "templates/hostname.tpl",
                tar::EntryType::Symlink,
                Some("/etc/shadow"),
                b"",
            ),
            "has a symbolic link \"templates/hostname.tpl\" outside rootfs/",
        ),
        (
            "hardlink.tar",
            raw_entry(
                "templates/x",
                tar::EntryType::Link,
                Some("../../etc/shadow"),
                b"",
            ),
            "has a hard link \"templates/x\" to \"../../etc/shadow\" outside the archive",
        ),
        (
            "device.tar",
            raw_entry("templates/null", tar::EntryType::Char, None, b""),
            "has a special file \"templates/null\" outside rootfs/",
        ),
    ];
    for (name, entry, problem) in cases {
        let file = c.write(name, &raw_tar(&[meta_entry.clone(), entry]));
        c.refuses(&[&file, &root], &format!("{name} {problem}"));
    }
    // A bomb: the header promises 300 MiB of zeros before metadata.yaml. It is refused from the
    // header alone, before anything inflates.
    let mut bomb_header = tar::Header::new_ustar();
    bomb_header.set_path("rootfs/zeros").unwrap();
    bomb_header.set_size(300 << 20);
    bomb_header.set_entry_type(tar::EntryType::Regular);
    bomb_header.set_cksum();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, bomb_header.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    std::io::Write::write_all(&mut encoder, &meta_entry).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "the bomb is small on disk");
    c.refuses(
        &[&c.write("bomb.tar.gz", &bomb)],
        "bomb.tar.gz has no metadata.yaml in its first 256 MiB",
    );
}

#[test]
fn roots() {
    let c = Corpus::new();
    let meta = c.meta("meta.tar.xz", &default_yaml());
    let squashfs = std::fs::read(c.path(&c.squashfs("real.squashfs"))).unwrap();
    let mut bad_version = squashfs.clone();
    bad_version[28] = 3;
    let disk = c.path("real.qcow2");
    support::qcow2(&disk, "q");

    c.refuses(&[&meta, &c.write("zero.squashfs", b"")], "zero.squashfs is an empty file, not an image root: give a squashfs, a qcow2 disk or a root.tar.xz");
    c.refuses(&[&meta, &c.write("text.squashfs", b"hsq? not quite\n")], "text.squashfs is a text file, not an image root: give a squashfs, a qcow2 disk or a root.tar.xz");
    c.refuses(
        &[&meta, &c.write("raw.qcow2", &vec![0u8; 1 << 16])],
        "raw.qcow2 is nothing but zero bytes at its start (a raw disk?), not an image root: give a squashfs, a qcow2 disk or a root.tar.xz",
    );
    let used = u64::from_le_bytes(squashfs[40..48].try_into().unwrap()) as usize;
    c.refuses(
        &[&meta, &c.write("trunc.squashfs", &squashfs[..used - 10])],
        &format!(
            "trunc.squashfs is truncated: its superblock says {used} bytes, the file has {}",
            used - 10
        ),
    );
    c.refuses(
        &[&meta, &c.write("v3.squashfs", &bad_version)],
        "v3.squashfs is not a squashfs 4.0 image (its superblock is damaged)",
    );
    c.refuses(
        &[
            &meta,
            &c.write(
                "xztext.tar.xz",
                &support::compress(b"not a tar at all", "xz"),
            ),
        ],
        "xztext.tar.xz is an xz stream but not an xz-compressed tarball",
    );
    c.refuses(&[&meta, &c.meta("second-meta.tar.xz", &default_yaml())], "second-meta.tar.xz is a metadata tarball, not a root; pass the metadata tarball first, then the root");
    c.refuses(
        &[&meta, &c.tar("root.tar.gz", &[("etc/hostname", b"x")], "gz")],
        "root.tar.gz is a gzip stream, not an image root: give a squashfs, a qcow2 disk or a root.tar.xz (a root tarball must be xz-compressed: root.tar.xz)",
    );
    c.refuses(
        &[&c.write("first.squashfs", &squashfs), &meta],
        "first.squashfs is a squashfs image; pass the metadata tarball first, then the root",
    );
    c.refuses(
        &[disk.file_name().unwrap().to_str().unwrap(), &meta],
        "real.qcow2 is a qcow2 disk; pass the metadata tarball first, then the root",
    );
    c.refuses(
        &[&meta, "missing.squashfs"],
        "cannot open missing.squashfs: No such file or directory",
    );
}

#[test]
fn unified_tarballs() {
    let c = Corpus::new();
    let good = default_yaml();
    let disk = c.path("d.qcow2");
    support::qcow2(&disk, "d");
    let qcow2 = std::fs::read(&disk).unwrap();
    c.refuses(&[&c.tar("onlymeta.tar.gz", &[("metadata.yaml", good.as_bytes())], "gz")], "onlymeta.tar.gz holds only metadata; pass the root file (squashfs, qcow2 disk or root.tar.xz) after it");
    c.refuses(&[&c.tar("rawvm.tar.gz", &[("metadata.yaml", good.as_bytes()), ("rootfs.img", &vec![0u8; 4096])], "gz")], "rawvm.tar.gz has a rootfs.img that is nothing but zero bytes at its start (a raw disk?), not a qcow2 disk (LXD and Incus run only qcow2 VM disks)");
    c.refuses(
        &[&c.tar(
            "both.tar.gz",
            &[
                ("metadata.yaml", good.as_bytes()),
                ("rootfs/etc/hostname", b"x"),
                ("rootfs.img", &qcow2),
            ],
            "gz",
        )],
        "both.tar.gz has both rootfs/ and rootfs.img; a unified image holds one of them",
    );
    c.refuses(
        &[&c.tar("norootmeta.tar.gz", &[("rootfs/etc/hostname", b"x")], "gz")],
        "norootmeta.tar.gz has no metadata.yaml; pass the metadata tarball first",
    );
}

#[test]
fn conflicts_with_what_is_published() {
    let c = Corpus::new();
    let published_meta = "published.tar.xz";
    let published_root = "published.squashfs";
    c.refuses(
        &[published_meta, published_root, "--serial", "20260101_0000"],
        &format!(
            "image {} is already published as testos:1:amd64:default version 20251127_1200",
            &support::sha256_of(&[&c.path(published_meta), &c.path(published_root)])[..12]
        ),
    );
    let other_meta = c.tar(
        "other.tar.xz",
        &[
            ("metadata.yaml", Meta::default().yaml().as_bytes()),
            ("templates/z.tpl", b"z"),
        ],
        "xz",
    );
    let other_root = c.squashfs("other.squashfs");
    c.refuses(&[&other_meta, &other_root], "version 20251127_1200 of testos:1:amd64:default already exists with a different metadata tarball; pass --serial to publish this one as a new version");
    let release2 = c.meta(
        "r2.tar.xz",
        &yaml(&Meta {
            release: "2",
            ..Meta::default()
        }),
    );
    c.refuses(
        &[&release2, &other_root, "--alias", "taken"],
        "alias \"taken\" already belongs to testos:1:amd64:default for amd64 container images; remove it there first (`alias remove taken --product testos:1:amd64:default`) or import with --no-default-alias",
    );
    c.refuses(
        &[&release2, &other_root, "--alias", "bad alias"],
        "alias \"bad alias\" may hold only letters, digits, '.', '_', '+', '-' and '/'",
    );
    c.refuses(
        &[&release2, &other_root, "--serial", "soon"],
        "serial \"soon\" must be 8 to 32 characters long; use the form YYYYMMDD_hhmm",
    );
    c.refuses(&[&release2, &other_root, "--requirement", "a b=c"], "requirement key \"a b\" may hold only letters, digits, '_', '-' and '.' (e.g. secureboot=false)");
}

#[test]
fn tricky_file_names_are_shown_escaped() {
    let c = Corpus::new();
    let root = c.squashfs("root.squashfs");
    let newline = c.write("evil\nname.tar.xz", b"text");
    c.refuses(
        &[&newline, &root],
        "\"evil\\u{a}name.tar.xz\" is not a tarball (it is a text file)",
    );
    // U+202E turns "gpj.exe" into something that reads "exe.jpg".
    let rtl = c.write("image\u{202e}gpj.tar.xz", b"text");
    c.refuses(
        &[&rtl, &root],
        "\"image\\u{202e}gpj.tar.xz\" is not a tarball (it is a text file)",
    );
}

#[test]
fn the_published_tree_survives_the_whole_corpus() {
    // After every refusal above the catalog still verifies: nothing half-done is left.
    let c = Corpus::new();
    let root = c.squashfs("root.squashfs");
    c.refuses(
        &[&c.write("x.tar.xz", b"junk"), &root],
        "x.tar.xz is not a tarball (it is a text file)",
    );
    let verify = c.t.run(&["verify"]);
    assert!(verify.status.success());
    assert_eq!(support::contract::assert_contract(&c.t.www()).len(), 1);
}

/// A tar header alone, declaring `size` bytes of data that the caller appends.
fn header_only(name: &str, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// xz streams laid end to end decode as one stream (the format allows it), so a bomb that
/// inflates to gigabytes is built from one compressed block repeated, not by compressing
/// gigabytes here.
fn xz_parts(parts: &[(&[u8], usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (data, copies) in parts {
        out.extend(support::compress(data, "xz").repeat(*copies));
    }
    out
}

/// Regression (issue 10, item 8): a 1.2 MiB metadata tarball that inflated to 8 GiB was
/// imported (27 CPU s) and published. Each bomb here is about 1.3 MiB of xz that unpacks to
/// 8 GiB; each is refused after unpacking at most the 64 MiB limit, in well under the time
/// one pass over its 8 GiB takes.
#[test]
fn metadata_bombs_are_refused_before_they_inflate() {
    const UNIT: usize = 16 << 20;
    const COPIES: usize = 512; // 8 GiB
    let c = Corpus::new();
    let yaml = default_yaml();
    let root = c.squashfs("root.squashfs");
    let zeros = vec![0u8; UNIT];
    let meta_entry = raw_entry(
        "metadata.yaml",
        tar::EntryType::Regular,
        None,
        yaml.as_bytes(),
    );
    let end = vec![0u8; 1024];
    let refusal = |name: &str| {
        format!(
            "{name} unpacks to more than 67108864 bytes besides its root filesystem (metadata, templates); the limit is catalog.max_metadata_unpacked_bytes"
        )
    };

    // One template entry of 8 GiB.
    let big_template = [
        meta_entry.clone(),
        header_only("templates/bomb.tpl", (UNIT * COPIES) as u64),
    ]
    .concat();
    let one_entry = c.write(
        "one-entry.tar.xz",
        &xz_parts(&[(&big_template, 1), (&zeros, COPIES), (&end, 1)]),
    );
    // 512 template entries of 16 MiB.
    let unit_entry = [
        header_only("templates/part.tpl", UNIT as u64),
        zeros.clone(),
    ]
    .concat();
    let many_entries = c.write(
        "many-entries.tar.xz",
        &xz_parts(&[(&meta_entry, 1), (&unit_entry, COPIES), (&end, 1)]),
    );
    // A small, whole archive followed by 8 GiB of zeros.
    let whole = raw_tar(std::slice::from_ref(&meta_entry));
    let trailing = c.write(
        "trailing.tar.xz",
        &xz_parts(&[(&whole, 1), (&zeros, COPIES)]),
    );
    // A unified image whose rootfs/ is fine and whose template is the bomb.
    let unified_head = [
        meta_entry.clone(),
        raw_entry("rootfs/hostname", tar::EntryType::Regular, None, b"bomb\n"),
        header_only("templates/bomb.tpl", (UNIT * COPIES) as u64),
    ]
    .concat();
    let unified = c.write(
        "unified.tar.xz",
        &xz_parts(&[(&unified_head, 1), (&zeros, COPIES), (&end, 1)]),
    );

    for (bomb, sources) in [
        (&one_entry, vec![one_entry.as_str(), root.as_str()]),
        (&many_entries, vec![many_entries.as_str(), root.as_str()]),
        (&trailing, vec![trailing.as_str(), root.as_str()]),
        (&unified, vec![unified.as_str()]),
    ] {
        let size = std::fs::metadata(c.path(bomb)).unwrap().len();
        assert!(size < 2 << 20, "{bomb} is {size} bytes");
        let started = std::time::Instant::now();
        c.refuses(&sources, &refusal(bomb));
        let took = started.elapsed();
        eprintln!("{bomb}: {size} bytes of xz, refused in {took:?}");
        assert!(
            took < std::time::Duration::from_secs(15),
            "{bomb} took {took:?}"
        );
    }
}

/// `qemu-img create -q -f qcow2 <options…>` in `dir`.
fn qemu_img_create(dir: &std::path::Path, options: &[&str]) {
    let status = std::process::Command::new(support::require_tool("qemu-img", "qemu-utils"))
        .args(["create", "-q", "-f", "qcow2"])
        .args(options)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "qemu-img create {options:?}");
}

/// Regression (issue 10, item 9): a qcow2 with garbage after its magic, one truncated to 100
/// bytes and one naming a backing file on the publisher's disk were all published.
#[test]
fn vm_disks_are_checked_like_squashfs() {
    let c = Corpus::new();
    let dir = c.t.path();
    let meta = c.meta("meta.tar.xz", &default_yaml());
    qemu_img_create(dir, &["base.qcow2", "16M"]);
    let base = std::fs::read(c.path("base.qcow2")).unwrap();
    let base_path = c.path("base.qcow2").display().to_string();
    let ext_path = c.path("external.raw").display().to_string();
    qemu_img_create(dir, &["-b", &base_path, "-F", "qcow2", "backed.qcow2"]);
    qemu_img_create(
        dir,
        &[
            "-o",
            &format!("data_file={ext_path}"),
            "external.qcow2",
            "16M",
        ],
    );
    qemu_img_create(
        dir,
        &[
            "--object",
            "secret,id=sec0,data=abc",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            "encrypted.qcow2",
            "16M",
        ],
    );
    qemu_img_create(dir, &["empty.qcow2", "0"]);
    let edited = |name: &str, at: usize, bytes: &[u8]| {
        let mut disk = base.clone();
        disk[at..at + bytes.len()].copy_from_slice(bytes);
        c.write(name, &disk)
    };
    let l1_offset = u64::from_be_bytes(base[40..48].try_into().unwrap());
    let l1_bytes = u32::from_be_bytes(base[36..40].try_into().unwrap()) * 8;
    let hint = "publish the standalone, unencrypted copy `qemu-img convert -O qcow2 <disk> <new disk>` writes";

    let cases: Vec<(String, String)> = vec![
        ("backed.qcow2".into(), format!("backed.qcow2 depends on a backing file {base_path:?} that hosts do not have; {hint}")),
        ("external.qcow2".into(), format!("external.qcow2 keeps its data in an external data file that hosts do not have; {hint}")),
        ("encrypted.qcow2".into(), format!("encrypted.qcow2 is encrypted (LUKS); hosts cannot start a VM from a disk they have no key for; {hint}")),
        (edited("unknown.qcow2", 72, &(1u64 << 40).to_be_bytes()), "unknown.qcow2 uses qcow2 features QEMU does not know (incompatible feature bits 0x10000000000); it cannot be opened".into()),
        (edited("v4.qcow2", 4, &4u32.to_be_bytes()), "v4.qcow2 is qcow2 version 4; QEMU reads only versions 2 and 3 (its header may be damaged)".into()),
        (edited("clusters.qcow2", 20, &30u32.to_be_bytes()), "clusters.qcow2 has a damaged qcow2 header: cluster_bits is 30, QEMU accepts 9 to 21".into()),
        ("empty.qcow2".into(), "empty.qcow2 has a damaged qcow2 header: its virtual size is 0 bytes, expected 1 byte to 64 TiB".into()),
        (c.write("short.qcow2", &base[..100]), "short.qcow2 is truncated: its qcow2 header needs 104 bytes, the file has 100".into()),
        (c.write("cut.qcow2", &base[..4096]), format!("cut.qcow2 is truncated or damaged: its L1 table ({l1_bytes} bytes at offset {l1_offset}) is not inside the file (4096 bytes)")),
        (c.write("garbage.qcow2", &[b"QFI\xfb".as_slice(), &[0xab; 4096]].concat()), "garbage.qcow2 is qcow2 version 2880154539; QEMU reads only versions 2 and 3 (its header may be damaged)".into()),
    ];
    for (disk, expected) in &cases {
        c.refuses(&[&meta, disk], expected);
    }
    // The same checks hold inside a unified VM tarball.
    let backed = std::fs::read(c.path("backed.qcow2")).unwrap();
    let unified = c.tar(
        "backed-vm.tar.gz",
        &[
            ("metadata.yaml", default_yaml().as_bytes()),
            ("rootfs.img", &backed),
        ],
        "gz",
    );
    c.refuses(&[&unified], &format!("backed-vm.tar.gz has a rootfs.img that depends on a backing file {base_path:?} that hosts do not have; {hint}"));

    // Sound disks from qemu-img, both versions, still import.
    qemu_img_create(dir, &["-o", "compat=0.10", "v2.qcow2", "16M"]);
    for (release, disk) in [("qcow-v2", "v2.qcow2"), ("qcow-v3", "base.qcow2")] {
        let meta = c.meta(
            &format!("{release}.tar.xz"),
            &yaml(&Meta {
                release,
                ..Meta::default()
            }),
        );
        let out = c.t.run(&[
            "import",
            c.path(&meta).to_str().unwrap(),
            c.path(disk).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{disk}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
