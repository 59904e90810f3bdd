use super::*;

#[test]
fn presets_parse() {
    for p in PRESETS {
        let c = AllShowersConfig::from_toml(p.text).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(c.layers(), 78);
    }
}
