from modelgate.cli import main

raise SystemExit(main())
