//! A zone read from a master file (RFC 1035 §5), answering by name and type.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use hickory_proto::rr::{LowerName, Name, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;

/// A zone file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// The file could not be read.
    #[error("cannot read the zone file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid zone.
    #[error("invalid zone: {0}")]
    Parse(String),
    /// The zone has no records.
    #[error("the zone has no records")]
    Empty,
}

/// What a zone holds for a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the type (following a CNAME at the name for other types).
    Records(Vec<Record>),
    /// The name exists, without records of the type (NODATA); the zone's SOA, if any.
    NoData(Option<Record>),
    /// The name does not exist in the zone (NXDOMAIN); the zone's SOA, if any.
    NxDomain(Option<Record>),
    /// The name is outside the zone.
    NotInZone,
}

/// An authoritative zone in memory.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: LowerName,
    records: BTreeMap<RrKey, RecordSet>,
    names: HashSet<LowerName>,
    soa: Option<Record>,
}

impl Zone {
    /// Parses master-file text; `origin` is used when the text has no `$ORIGIN`.
    pub fn parse(text: &str, origin: Option<Name>) -> Result<Self, ZoneError> {
        let (origin, records) = Parser::new(text, None, origin)
            .parse()
            .map_err(|e| ZoneError::Parse(e.to_string()))?;
        if records.is_empty() {
            return Err(ZoneError::Empty);
        }
        let names = records.keys().map(|k| k.name.clone()).collect();
        let soa = records
            .iter()
            .find(|(k, _)| k.record_type == RecordType::SOA)
            .and_then(|(_, set)| set.records_without_rrsigs().next().cloned());
        Ok(Self {
            origin: LowerName::from(origin),
            records,
            names,
            soa,
        })
    }

    /// Reads and parses a master file.
    pub fn from_file(path: &Path, origin: Option<Name>) -> Result<Self, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, origin)
    }

    /// The zone's origin.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// How many record sets it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none (never, for a parsed zone).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// What the zone says about `name` and `ty`.
    pub fn lookup(&self, name: &Name, ty: RecordType) -> Lookup {
        let name = LowerName::from(name.to_lowercase());
        if !self.origin.zone_of(&name) {
            return Lookup::NotInZone;
        }
        let get = |ty: RecordType| {
            self.records
                .get(&RrKey::new(name.clone(), ty))
                .map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
                .filter(|r| !r.is_empty())
        };
        if let Some(records) = get(ty) {
            return Lookup::Records(records);
        }
        if ty != RecordType::CNAME
            && let Some(cname) = get(RecordType::CNAME)
        {
            return Lookup::Records(cname);
        }
        if self.names.contains(&name) {
            Lookup::NoData(self.soa.clone())
        } else {
            Lookup::NxDomain(self.soa.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = include_str!("../testdata/example.test.zone");

    #[test]
    fn a_zone_answers_records_nodata_nxdomain_and_out_of_zone() {
        let z = Zone::parse(ZONE, None).unwrap();
        assert_eq!(z.origin().to_string(), "example.test.");
        let n = |s: &str| Name::from_ascii(s).unwrap();
        match z.lookup(&n("WWW.example.test."), RecordType::A) {
            Lookup::Records(r) => assert_eq!(r[0].data().to_string(), "192.0.2.10"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            z.lookup(&n("www.example.test."), RecordType::AAAA),
            Lookup::Records(_)
        ));
        assert!(
            matches!(z.lookup(&n("alias.example.test."), RecordType::A), Lookup::Records(r) if r[0].record_type() == RecordType::CNAME)
        );
        assert!(matches!(
            z.lookup(&n("txt.example.test."), RecordType::A),
            Lookup::NoData(Some(_))
        ));
        assert!(matches!(
            z.lookup(&n("nope.example.test."), RecordType::A),
            Lookup::NxDomain(Some(_))
        ));
        assert_eq!(
            z.lookup(&n("www.example.org."), RecordType::A),
            Lookup::NotInZone
        );
    }

    #[test]
    fn bad_zones_are_refused_with_the_reason() {
        assert!(matches!(
            Zone::parse("www IN A 192.0.2.1\n", None),
            Err(ZoneError::Parse(_))
        ));
        assert!(matches!(
            Zone::parse("$ORIGIN a.test.\n$TTL 5\nwww IN A not-an-address\n", None),
            Err(ZoneError::Parse(_))
        ));
        assert!(matches!(
            Zone::parse("$ORIGIN a.test.\n", None),
            Err(ZoneError::Empty)
        ));
        assert!(matches!(
            Zone::from_file(Path::new("/nonexistent/zone"), None),
            Err(ZoneError::Read { .. })
        ));
    }
}
