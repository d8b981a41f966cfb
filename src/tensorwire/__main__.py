from tensorwire.cli import main

raise SystemExit(main())
