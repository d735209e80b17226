"""``crossderm download``: fetch HAM10000 and ISIC 2019 from their publishers, verified, into ``prepare``'s layout.

Why a layer of its own: getting the data right is the first step of every real run, and doing it by hand
(browser downloads, ``unzip``, renaming folders) is where silent damage creeps in — a truncated zip, the
Dataverse ``.tab`` conversion instead of the original CSV, images unpacked one folder too deep. This package
downloads each file with HTTP Range resume, checks it against the checksum its publisher serves (and says so
plainly when the publisher serves none), unpacks zips without letting a member escape the target folder, and
places the result atomically.

Modules: ``catalog`` (the one table of datasets, URLs, licences and citations), ``http`` (requests, Range
resume, retries), ``verify`` (checksums from Dataverse metadata and S3 headers), ``publishers`` (what a
publisher says about each file), ``unpack`` (safe zip extraction) and ``fetch`` (the whole sequence).

This module holds only the dataset names, as plain strings: ``crossderm download --help`` imports it and must
not pay for pandas (which ``catalog`` pulls in through ``crossderm.prepare.sources``).
"""

from __future__ import annotations

DATASET_NAMES = ("ham10000", "isic2019")
