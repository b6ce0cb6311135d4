"""Hubble Legacy Archive (hla.stsci.edu): colour previews (and, if asked, FITS) around targets.

For each entry of ``scrape.hla.targets`` (a name such as ``M101``, or ``"name@ra,dec"`` in
degrees to skip name resolution):

1. Resolve the name with CDS Sesame (``resolver_url``, default
   ``https://cds.unistra.fr/cgi-bin/nph-sesame/-oI/A?<name>``, the service and ``%J ra dec``
   answer line that ``astropy.coordinates.name_resolve`` uses).
2. Ask the HLA's Simple Image Access service for the combined (drizzled) images there:
   ``<base_url>/cgi-bin/hlaSIAP.cgi?POS=<ra>,<dec>&SIZE=<radius_deg>&FORMAT=image/fits
   &imagetype=combined&inst=<inst>`` (a VOTable; parameters as in the HLA SIAP examples used by
   astroquery-era notebooks and the IVOA SIA 1.0 standard).
3. Group the answer by visit (dataset name without its filter, e.g. ``hst_10918_a3_acs_wfc``)
   and fetch one colour composite per visit from the cutout service,
   ``<base_url>/cgi-bin/fitscut.cgi?red=..&green=..&blue=..&RA=..&Dec=..&size=<px>&format=jpeg``
   (https://hla.stsci.edu/fitscutcgi_interface.html: red/green/blue are dataset names; one band
   gives a grey image), longest wavelength as red. With ``scrape.hla.fits: true`` each band's
   FITS cutout (``format=fits``) is stored byte-for-byte beside the preview as
   ``<preview id>-<filter>-fits.fits`` with ``"kind": "fits"`` in its manifest record.

The HLA was frozen in 2017: it holds no observations taken after that (use MAST for newer data).
HST data are public and not copyrighted; the HLA asks to be acknowledged (credit line below).
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

from pipeline.errors import AstroganError
from pipeline.fsio import MANIFEST, append_jsonl, sha256_bytes
from pipeline.sources.client import FetchError, PoliteClient, make_client
from pipeline.sources.common import BadImage, SourceConfig, now_iso, write_durable
from pipeline.sources.crawl import Candidate, Download, run_source, source_id

HOSTS = {"hla.stsci.edu", "cds.unistra.fr"}
RESOLVER = "https://cds.unistra.fr/cgi-bin/nph-sesame/-oI/A"
LICENCE = "public HST archive data (no copyright); acknowledge the Hubble Legacy Archive"
CREDIT = ("NASA/ESA Hubble Space Telescope, Hubble Legacy Archive (STScI/NASA, ST-ECF/ESA, "
          "CADC/NRC/CSA)")


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    opts = cfg.options
    base = opts.get("base_url", "https://hla.stsci.edu").rstrip("/")
    resolver = opts.get("resolver_url", RESOLVER)
    targets = opts.get("targets") or []
    if not targets:
        raise AstroganError("params.yaml scrape.hla.targets is empty; list targets such as [M101]")
    client = make_client(cfg, HOSTS, resolver)
    return run_source(out_dir, cfg, client, lambda c: _visits(c, base, resolver, targets, cfg))


async def _visits(client: PoliteClient, base: str, resolver: str, targets: list,
                  cfg: SourceConfig) -> AsyncIterator[Candidate]:
    o = cfg.options
    for target in targets:
        try:
            name, ra, dec = await resolve_target(client, resolver, target)
            query = {"POS": f"{ra},{dec}", "SIZE": o.get("radius_deg", 0.05),
                     "FORMAT": "image/fits", "imagetype": o.get("imagetype", "combined"),
                     "inst": o.get("inst", "ACS,WFC3,WFPC2")}
            resp = await client.get(f"{base}/cgi-bin/hlaSIAP.cgi?{urlencode(query)}")
            visits = group_visits(siap_rows(resp.body, resp.url))
        except FetchError as e:
            # One unresolvable or failing target is recorded in failed.jsonl; the others go on.
            yield _failed(source_id("hla", str(target).partition("@")[0]), e)
            continue
        for visit, bands in visits.items():
            yield _candidate(base, name, ra, dec, visit, bands, cfg)


def _failed(cid: str, error: FetchError) -> Candidate:
    async def resolve() -> list[Download]:
        raise error
    return Candidate(cid, resolve)


async def resolve_target(client: PoliteClient, resolver: str, target) -> tuple[str, float, float]:
    """``(name, ra, dec)`` in degrees from ``"M101"``, ``"M101@210.80,54.35"`` or a dict."""
    if isinstance(target, dict):
        return str(target["name"]), float(target["ra"]), float(target["dec"])
    name, _, coords = str(target).partition("@")
    if coords:
        ra, dec = (float(x) for x in coords.split(","))
        return name.strip(), ra, dec
    resp = await client.get(f"{resolver}?{quote(name.strip())}")
    m = re.search(r"^%J\s+([0-9.]+)\s+([+-]?[0-9.]+)", resp.text(), re.M)
    if not m:
        raise FetchError(f"{resp.url}: could not resolve target {name!r} (no %J line); "
                         "give coordinates as 'name@ra,dec' in scrape.hla.targets")
    return name.strip(), float(m[1]), float(m[2])


def siap_rows(body: bytes, url: str) -> list[dict]:
    """Rows of a SIAP VOTable as ``{lower-case column: value}``."""
    from astropy.io.votable import parse_single_table

    if body[:512].lstrip().lower().startswith((b"<!doctype", b"<html")):
        raise FetchError(f"{url}: got an HTML page, not a VOTable")
    try:
        table = parse_single_table(io.BytesIO(body), verify="ignore").to_table()
    except Exception as e:  # astropy raises several types for malformed XML
        raise FetchError(f"{url}: not a readable VOTable ({type(e).__name__}: {e})") from None
    names = table.colnames
    return [{n.lower(): _plain(row[n]) for n in names} for row in table]


def _plain(v):
    v = v.item() if hasattr(v, "item") else v
    return v.decode() if isinstance(v, bytes) else v


def group_visits(rows: list[dict]) -> dict[str, dict[str, str]]:
    """``{visit: {filter: dataset}}``: the bands of each visit, ready for a colour composite."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        dataset = str(r.get("dataset") or r.get("datasetname") or r.get("title") or "").strip()
        filt = str(r.get("spectral_elt") or r.get("filter") or "").strip().lower()
        if not dataset or not filt or "detection" in filt:
            continue
        visit = dataset[: -len(filt) - 1] if dataset.lower().endswith("_" + filt) else dataset
        out.setdefault(visit, {}).setdefault(filt, dataset)
    return out


def wavelength(filt: str, visit: str) -> float:
    """Rough pivot wavelength (nm) of an HST filter name: F814W -> 814, WFC3/IR F160W -> 1600."""
    m = re.search(r"(\d{3,4})", filt)
    nm = float(m[1]) if m else 0.0
    return nm * 10 if "_ir" in visit.lower() and nm < 200 else nm


def _candidate(base: str, target: str, ra: float, dec: float, visit: str, bands: dict[str, str],
               cfg: SourceConfig) -> Candidate:
    o = cfg.options
    order = sorted(bands, key=lambda f: wavelength(f, visit), reverse=True)[:3]
    cid = source_id("hla", f"{target}_{visit}")
    cut = {"RA": ra, "Dec": dec, "size": int(o.get("cutout_px", 2048))}
    channels = {1: ("red",), 2: ("red", "blue"), 3: ("red", "green", "blue")}[len(order)]
    rgb = dict(zip(channels, order, strict=True))
    params = {k: bands[f] for k, f in rgb.items()}
    preview = f"{base}/cgi-bin/fitscut.cgi?{urlencode({**params, **cut, 'format': 'jpeg'})}"
    m = re.match(r"hst_(\d+)_", visit)
    record = {"source": "hla", "title": f"{target} {visit} ({', '.join(order)})",
              "credit": CREDIT + (f"; HST proposal {m[1]}" if m else ""), "licence": LICENCE,
              "target": target, "filters": order}
    fits_dl = []
    if o.get("fits"):
        for f in order:
            url = f"{base}/cgi-bin/fitscut.cgi?{urlencode({'red': bands[f], **cut, 'format': 'fits'})}"
            fits_dl.append(Download(f"{cid}-{f}-fits", url,
                                    {**record, "title": f"{target} {bands[f]}", "filter": f,
                                     "dataset": bands[f], "preview": cid, "kind": "fits"},
                                    store=store_fits))

    async def resolve() -> list[Download]:
        return [Download(cid, preview, record), *fits_dl]
    return Candidate(cid, resolve, extra_ids=tuple(d.id for d in fits_dl))


def store_fits(out_dir: Path, fits_id: str, data: bytes, record: dict) -> dict:
    """Validate a FITS file with astropy, write it byte-for-byte atomically, append the manifest."""
    from astropy.io import fits

    origin = record.get("url") or fits_id
    if data[:512].lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        raise BadImage(f"{origin}: got an HTML/XML page, not FITS")
    try:
        with fits.open(io.BytesIO(data), ignore_missing_end=False) as hdul:
            hdu = next((h for h in hdul if h.data is not None and h.data.ndim >= 2), None)
            if hdu is None:
                raise BadImage(f"{origin}: FITS has no image HDU")
            height, width = hdu.data.shape[-2:]
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"{origin}: not a readable FITS file ({type(e).__name__}: {e})") from None
    path = write_durable(out_dir, f"{fits_id}.fits", data)
    row = {"id": fits_id, "source": record.get("source"), "url": record.get("url"),
           "sha256": sha256_bytes(data), "width": int(width), "height": int(height),
           "title": record.get("title", ""), "credit": record.get("credit", ""),
           "licence": record.get("licence", ""), "fetched_at": now_iso(), "file": path.name}
    row.update({k: v for k, v in record.items() if k not in row})
    append_jsonl(out_dir / MANIFEST, row)
    return row
