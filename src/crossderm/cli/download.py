"""``crossderm download``: fetch HAM10000 / ISIC 2019 from their publishers into the layout ``prepare`` reads.

Why a command: the official files come from two publishers with two protocols (Harvard Dataverse's API, the
ISIC challenge's S3 bucket), are large enough that interrupted downloads are routine, and differ in what can
be verified. The command does it the same careful way every time and says exactly what it checked.
"""

from __future__ import annotations

import argparse

from crossderm.cli.options import count

# crossderm.download holds only the dataset names (no pandas): importing it keeps --help instant.
from crossderm.download import DATASET_NAMES

EPILOG = """\
examples:
  crossderm download ham10000 isic2019 --out data
      both datasets (about 2.8 GB + 9.1 GB, and as much again while unpacking), then:
      crossderm prepare --ham data/HAM10000 --isic data/ISIC2019 --out prepared/real
  crossderm download ham10000 --out data
      run it again after an interruption: it resumes where it stopped; after success it does nothing
  CROSSDERM_HAM10000_URL=http://127.0.0.1:8080 crossderm download ham10000 --out /tmp/t
      a Dataverse mirror or test server (CROSSDERM_ISIC2019_URL likewise, for the ISIC bucket)

layout written:
  OUT/HAM10000/HAM10000_metadata.csv, HAM10000_images_part_1/, HAM10000_images_part_2/
  OUT/ISIC2019/ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv, ISIC_2019_Training_Input/
  OUT/<folder>/.crossderm-download.json   what was fetched from where, and how each file was verified

verification: HAM10000 files against the MD5 in the Dataverse file metadata; ISIC 2019 files against the S3
ETag where it is a plain MD5 (single-part upload), else size only (said so per file); zips also by the CRC-32
of every member while unpacking.
"""


def register(subparsers: argparse._SubParsersAction, formatter_class: type[argparse.HelpFormatter]) -> None:
    parser = subparsers.add_parser(
        "download",
        help="fetch HAM10000 / ISIC 2019 from their publishers, verified, into the layout prepare reads",
        description="Download the official HAM10000 (Harvard Dataverse) and ISIC 2019 training (ISIC challenge) "
        "files with resume, verify them against the checksums their publishers serve, check free disk space "
        "first, and unpack them atomically into the folders `crossderm prepare` reads.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("datasets", nargs="+", choices=DATASET_NAMES, metavar="DATASET",
                        help=f"one or more of: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to hold HAM10000/ and ISIC2019/")
    parser.add_argument("--overwrite", action="store_true", help="fetch again and replace a finished dataset folder")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the downloaded zips in OUT/.crossderm-download/ after unpacking")
    parser.add_argument("--retries", type=count(0), default=5,
                        help="consecutive failed tries without progress before giving up on a file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from crossderm.download.fetch import download_dataset, human_bytes
    from crossderm.fsutil import check_writable_folder

    check_writable_folder(args.out, "--out")
    results = []
    for name in dict.fromkeys(args.datasets):  # each once, in the order given
        results.append(download_dataset(name, args.out, overwrite=args.overwrite, keep_archives=args.keep_archives,
                                        retries=args.retries))
    for result in results:
        state = "already complete" if result.already else "done"
        print(f"\n{result.dataset}: {state} -> {result.folder}")
        for report in result.files:
            print(f"  {report.name} ({human_bytes(report.bytes)}): {report.verified}")
        print(f"  licence: {result.licence}")
        print("  cite:")
        for line in result.citation.splitlines():
            print(f"    {line}")
    folders = {result.dataset: result.folder for result in results}
    ham, isic = folders.get("ham10000"), folders.get("isic2019")
    options = " ".join(part for part in (ham and f"--ham {ham}", isic and f"--isic {isic}") if part)
    print(f"\nnext: crossderm prepare {options} --out prepared/real")
    return 0
