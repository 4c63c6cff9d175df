//! The district and hospital registries events are validated against.
//!
//! Both ship as CSV files in `registry/` (compiled into the binary as the
//! default) and can be replaced at start by files given in configuration.

use foldhash::{HashMap, HashMapExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The districts shipped with paicha: Chongqing's 38 county-level units.
pub const DEFAULT_DISTRICTS_CSV: &str = include_str!("../../registry/districts.csv");
/// The hospitals shipped with paicha: 4 designated, 2 backup, one per district.
pub const DEFAULT_HOSPITALS_CSV: &str = include_str!("../../registry/hospitals.csv");

/// One county-level unit (GB/T 2260 code).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct District {
    /// 6-digit code, e.g. `500103`.
    pub district: String,
    /// Romanized name.
    pub name: String,
    /// Chinese name.
    pub name_zh: String,
    /// Resident population (persons), used to weight the simulator.
    pub population: u64,
    /// Whether the district is on the city's border (has road checkpoints).
    #[serde(default)]
    pub border: bool,
}

/// The role a hospital plays in treating cases.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HospitalRole {
    /// A designated COVID-19 hospital.
    Designated,
    /// A backup hospital held in reserve.
    Backup,
    /// A district hospital that admits patients before transfer.
    District,
}

/// One hospital that may appear in `case` and `bed` events.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Hospital {
    /// The contract's `hospital_id`.
    pub hospital_id: String,
    /// Name in English.
    pub name: String,
    /// Name in Chinese.
    #[serde(default)]
    pub name_zh: String,
    /// District code of the hospital.
    pub district: String,
    /// Designated, backup or district.
    pub role: HospitalRole,
    /// Beds assumed until a `capacity` event says otherwise.
    pub beds_total: u64,
}

impl Hospital {
    /// A designated COVID hospital (the `designated` column of the tables).
    pub fn designated(&self) -> bool {
        self.role == HospitalRole::Designated
    }
}

/// Districts and hospitals, indexed for validation on the hot path.
///
/// Districts are addressed by a small integer (their position) so that the
/// processors can key state by `u16` instead of strings.
#[derive(Debug, Clone)]
pub struct Registry {
    districts: Vec<District>,
    district_index: HashMap<String, u16>,
    hospitals: Vec<Hospital>,
    hospital_index: HashMap<String, u16>,
}

impl Registry {
    /// The registries shipped with paicha.
    pub fn builtin() -> Result<Self> {
        Self::from_csv(DEFAULT_DISTRICTS_CSV, DEFAULT_HOSPITALS_CSV)
    }

    /// Loads the registries from files, falling back to the shipped ones for
    /// whichever path is `None`.
    pub fn load(districts: Option<&Path>, hospitals: Option<&Path>) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read registry file {}", p.display()))
        };
        let d = match districts {
            Some(p) => read(p)?,
            None => DEFAULT_DISTRICTS_CSV.to_string(),
        };
        let h = match hospitals {
            Some(p) => read(p)?,
            None => DEFAULT_HOSPITALS_CSV.to_string(),
        };
        Self::from_csv(&d, &h)
    }

    /// Parses both registries from CSV text (with a header row).
    pub fn from_csv(districts_csv: &str, hospitals_csv: &str) -> Result<Self> {
        let districts: Vec<District> = parse_csv(districts_csv).context("district registry")?;
        let hospitals: Vec<Hospital> = parse_csv(hospitals_csv).context("hospital registry")?;
        if districts.len() > u16::MAX as usize || hospitals.len() > u16::MAX as usize {
            bail!("registry too large: at most 65535 districts and hospitals");
        }
        let mut district_index = HashMap::with_capacity(districts.len());
        for (i, d) in districts.iter().enumerate() {
            if d.district.len() != 6 || !d.district.bytes().all(|b| b.is_ascii_digit()) {
                bail!("district registry: `{}` is not a 6-digit code", d.district);
            }
            if district_index
                .insert(d.district.clone(), i as u16)
                .is_some()
            {
                bail!("district registry: `{}` appears twice", d.district);
            }
        }
        let mut hospital_index = HashMap::with_capacity(hospitals.len());
        for (i, h) in hospitals.iter().enumerate() {
            if !district_index.contains_key(&h.district) {
                bail!(
                    "hospital registry: `{}` is in unknown district `{}`",
                    h.hospital_id,
                    h.district
                );
            }
            if hospital_index
                .insert(h.hospital_id.clone(), i as u16)
                .is_some()
            {
                bail!("hospital registry: `{}` appears twice", h.hospital_id);
            }
        }
        Ok(Self {
            districts,
            district_index,
            hospitals,
            hospital_index,
        })
    }

    /// All districts, in registry order (the index is their position).
    pub fn districts(&self) -> &[District] {
        &self.districts
    }

    /// All hospitals, in registry order.
    pub fn hospitals(&self) -> &[Hospital] {
        &self.hospitals
    }

    /// The index of a district code, if registered.
    pub fn district_id(&self, code: &str) -> Option<u16> {
        self.district_index.get(code).copied()
    }

    /// The district at an index returned by [`Registry::district_id`].
    pub fn district(&self, id: u16) -> &District {
        &self.districts[id as usize]
    }

    /// The index of a hospital id, if registered.
    pub fn hospital_id(&self, id: &str) -> Option<u16> {
        self.hospital_index.get(id).copied()
    }

    /// The hospital at an index returned by [`Registry::hospital_id`].
    pub fn hospital(&self, id: u16) -> &Hospital {
        &self.hospitals[id as usize]
    }

    /// The registries as CSV text, to be stored beside the data they validated.
    pub fn to_csv(&self) -> (String, String) {
        let mut d = String::from("district,name,name_zh,population,border\n");
        for x in &self.districts {
            d.push_str(&csv_row(&[
                &x.district,
                &x.name,
                &x.name_zh,
                &x.population.to_string(),
                &x.border.to_string(),
            ]));
        }
        let mut h = String::from("hospital_id,name,name_zh,district,role,beds_total\n");
        for x in &self.hospitals {
            let role = match x.role {
                HospitalRole::Designated => "designated",
                HospitalRole::Backup => "backup",
                HospitalRole::District => "district",
            };
            h.push_str(&csv_row(&[
                &x.hospital_id,
                &x.name,
                &x.name_zh,
                &x.district,
                role,
                &x.beds_total.to_string(),
            ]));
        }
        (d, h)
    }
}

fn csv_row(fields: &[&str]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_record(fields);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn parse_csv<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for (i, r) in csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .enumerate()
    {
        rows.push(r.with_context(|| format!("row {}", i + 2))?);
    }
    if rows.is_empty() {
        bail!("no rows");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_matches_reference() {
        let r = Registry::builtin().unwrap();
        assert_eq!(r.districts().len(), 38);
        assert_eq!(r.districts().iter().filter(|d| d.border).count(), 26);
        assert_eq!(r.district(r.district_id("500103").unwrap()).name, "Yuzhong");
        let designated: Vec<_> = r
            .hospitals()
            .iter()
            .filter(|h| h.designated())
            .map(|h| h.hospital_id.as_str())
            .collect();
        assert_eq!(
            designated,
            ["cq-phmc", "cq-sanxia", "cq-yongchuan", "cq-qianjiang"]
        );
        assert_eq!(r.hospitals().len(), 6 + 38);
        assert!(r.hospital_id("dh-500243").is_some());
    }

    #[test]
    fn csv_round_trip() {
        let r = Registry::builtin().unwrap();
        let (d, h) = r.to_csv();
        let r2 = Registry::from_csv(&d, &h).unwrap();
        assert_eq!(r.districts(), r2.districts());
        assert_eq!(r.hospitals(), r2.hospitals());
    }

    #[test]
    fn rejects_duplicate_district() {
        let d = "district,name,name_zh,population\n500101,A,A,1\n500101,B,B,1\n";
        let err = Registry::from_csv(d, DEFAULT_HOSPITALS_CSV).unwrap_err();
        assert!(format!("{err:#}").contains("appears twice"));
    }
}
