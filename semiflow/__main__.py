from semiflow.cli import main

raise SystemExit(main())
