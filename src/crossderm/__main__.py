from crossderm.cli import main

raise SystemExit(main())
