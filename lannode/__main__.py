from lannode.cli import main

raise SystemExit(main())
