from resnetlab.cli import main

raise SystemExit(main())
