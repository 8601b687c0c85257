from zscir.cli import main

raise SystemExit(main())
